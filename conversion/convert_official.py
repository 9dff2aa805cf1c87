"""Convert an official TUNA checkpoint into a pipeline repository; `--help` lists the flags (conversion/README.md).

The converter itself is `tuna_hf.convert_official` (`convert_official_checkpoint`, importable; also installed as the
`tuna-convert-official` command).
"""

from tuna_hf.convert_official import main

if __name__ == "__main__":
    main()
