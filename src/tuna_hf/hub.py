"""Hub helpers: the model card of a pipeline repository and its upload."""

from importlib import resources
from pathlib import Path


def render_model_card(**fields) -> str:
    """The repository README from the `model_card.md` template (its `{placeholders}` filled from `fields`)."""
    template = (resources.files("tuna_hf") / "model_card.md").read_text()
    return template.format(**fields)


def upload_repository(folder, repo_id: str, private: bool = False) -> str:
    """Create (if needed) the Hub model repository `repo_id`, upload `folder` into it, return its URL."""
    from huggingface_hub import HfApi

    if not (Path(folder) / "model_index.json").exists():
        raise ValueError(f"{folder} is not a pipeline repository (no model_index.json).")
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model")
    return f"https://huggingface.co/{repo_id}"
