"""The README's main job runs end to end on the embedded checkpoint, and is reproducible."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tuna_hf import TunaFlowMatchScheduler, TunaPipeline
from tuna_hf.demo.shapes import world_texts
from tuna_hf.testing import build_byte_tokenizer, tiny_tuna_model, tiny_tuna_processor

REPO = Path(__file__).resolve().parents[1]


def run_quickstart(output_dir: Path) -> str:
    command = [sys.executable, str(REPO / "examples" / "quickstart.py"), "--output-dir", str(output_dir)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_quickstart_writes_its_outputs_and_repeats_them(tmp_path):
    report = run_quickstart(tmp_path / "first")
    assert "Outputs written to" in report and "read back right" in report
    for name in ("text_to_image.png", "edit.png", "question.png", "report.txt"):
        assert (tmp_path / "first" / name).exists(), name
    run_quickstart(tmp_path / "second")
    for name in ("text_to_image.png", "edit.png"):
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def load_example(relative_path: str):
    spec = importlib.util.spec_from_file_location(Path(relative_path).stem, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_refuses_a_folder_that_is_not_a_pipeline(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "quickstart.py"), "--model", str(tmp_path)]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "is not a pipeline repository" in result.stderr


def test_finalize_assembles_the_repository_with_its_card_and_pushes_it(tmp_path, monkeypatch):
    import huggingface_hub

    processor = tiny_tuna_processor(build_byte_tokenizer(world_texts()))
    scheduler = TunaFlowMatchScheduler.from_official_defaults("tuna_2")
    model = tiny_tuna_model("patch", processor.tokenizer)
    pipeline = TunaPipeline(model, processor, scheduler, edit_negative_prompt="", guidance_interval=(0.0, 0.925))
    pipeline.save_pretrained(tmp_path / "run")
    scores = {"steps": 20, "text_to_image": 0.95, "vqa": 1.0, "editing": 0.85}
    (tmp_path / "scores.json").write_text(json.dumps(scores))
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(repo_id))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **kw: calls.append(kw["folder_path"]))
    arguments = [str(tmp_path / "run"), str(tmp_path / "out"), "--scores", str(tmp_path / "scores.json")]
    monkeypatch.setattr(sys, "argv", ["finalize.py", *arguments, "--push-to-hub", "someone/shapes"])
    load_example("examples/shapes/finalize.py").main()
    assert calls == ["someone/shapes", str(tmp_path / "out")]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "text-to-image 0.950, VQA 1.000, editing 0.850" in card
    assert 'from_pretrained("someone/shapes", subfolder="transformer"' in card and "license: apache-2.0" in card
    assert (
        "guidance 3.0 (text-to-image) / 2.0 (editing) at flow times t < 0.925, initial noise scale 2.0; editing's "
        "default negative prompt: empty. They differ from the official tuna_2 predict defaults in "
        "`guidance_interval` (0.0, 0.925) (official: always), `edit_negative_prompt`" in " ".join(card.split())
    )
    assert {"model_index.json", "transformer", "processor", "scheduler"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }


def test_the_pipeline_benchmark_runs(tmp_path):
    """`benchmarks/bench_pipelines.py` on a one-layer model at 32×32 and 2 steps: its three ways sample the same."""
    command = [sys.executable, str(REPO / "benchmarks" / "bench_pipelines.py"), "--size", "32", "--steps", "2"]
    command += ["--hidden-size", "64", "--layers", "1"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("caching:") == 2
