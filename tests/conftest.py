import json
import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
PARITY_DIR = Path(os.environ.get("TUNA_PARITY_DIR", REPO.parent / "shared" / "parity"))
VARIANTS = ("tuna", "tuna_r", "tuna_2")


def require_parity() -> Path:
    """The official parity references; CI (TUNA_REQUIRE_PARITY=1) fails instead of skipping when they are absent."""
    if (PARITY_DIR / "README.md").exists():
        return PARITY_DIR
    reason = (
        f"official parity references not found at {PARITY_DIR} (set TUNA_PARITY_DIR); to record them yourself: "
        "`bash parity/make_official_env.sh /tmp/official` then `/tmp/official/venv/bin/python "
        "parity/record_references.py --official /tmp/official/tuna-2 --variant all --output DIR` "
        "(README, 'Checking parity yourself')"
    )
    if os.environ.get("TUNA_REQUIRE_PARITY") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def official_config(variant: str):
    """Our config for a parity variant, from the official config files stored beside its weights."""
    from tuna_hf.convert_official import tuna_config_from_official

    folder = require_parity() / variant
    official = json.loads((folder / "config.json").read_text())
    siglip = folder / "siglip_vision_config.json"
    return tuna_config_from_official(
        official["official_class"],
        official["wrapper_kwargs"],
        json.loads((folder / "qwen2_config.json").read_text()),
        official["tokenizer"]["tuna_token_ids"],
        json.loads(siglip.read_text()) if siglip.exists() else None,
        official_vae_kwargs(folder) if "vae" in official else None,
    )


def official_vae_kwargs(folder):
    """The official `Wan2_2_VAE` constructor arguments recorded in a parity variant's config.json."""
    recorded = json.loads((folder / "config.json").read_text())["vae"]
    names = ("z_dim", "dim", "dec_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "dropout")
    return {name: recorded[name] for name in names}


@pytest.fixture(scope="session")
def parity_models():
    """Official tiny checkpoints loaded into our model (float32, eval), one per variant, built lazily."""
    from tuna_hf import TunaForUnifiedMultimodal
    from tuna_hf.convert_official import load_official_state_dict

    cache = {}

    def load(variant):
        if variant not in cache:
            model = TunaForUnifiedMultimodal(official_config(variant)).eval()
            load_official_state_dict(model, torch.load(require_parity() / variant / "model.pt", weights_only=True))
            cache[variant] = model
        return cache[variant]

    return load


@pytest.fixture(scope="session")
def byte_tokenizer():
    from tuna_hf.testing import build_byte_tokenizer

    return build_byte_tokenizer()
