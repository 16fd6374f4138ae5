"""Publish a model folder on the Hugging Face Hub, in a form timm reads directly.

The uploaded repo holds `config.json` + `model.safetensors` (+ `model.onnx` when present) and the model card
as `README.md`; `timm.create_model("hf-hub:ORG/REPO", pretrained=True)` loads it for the timm architectures,
`zoo.load("hf://ORG/REPO")` for all of ours.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from zoo.cards import render_card
from zoo.errors import ZooError
from zoo.folder import CONFIG_NAME, INT8_ONNX_NAME, ONNX_NAME, WEIGHTS_NAME, is_model_folder

UPLOADED = (CONFIG_NAME, WEIGHTS_NAME, ONNX_NAME, INT8_ONNX_NAME)


def stage_folder(folder: str | os.PathLike, staging: str | os.PathLike) -> Path:
    """Copy what is uploaded into `staging`: the folder's files and README.md (the rendered card)."""
    folder, staging = Path(folder), Path(staging)
    if not is_model_folder(folder):
        raise ZooError(f"{folder} is not a model folder (config.json + model.safetensors); nothing to push")
    staging.mkdir(parents=True, exist_ok=True)
    for name in UPLOADED:
        if (folder / name).is_file():
            shutil.copy2(folder / name, staging / name)
    (staging / "README.md").write_text(render_card(folder))
    return staging


def push_to_hub(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False,
                commit_message: str = "Upload ssl-zoo model folder") -> str:
    """Create (if needed) the model repo `repo_id` and upload the staged folder; return the repo URL."""
    import tempfile

    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    if repo_id.count("/") != 1:
        raise ZooError(f"repo id {repo_id!r} must be ORG/NAME")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="zoo-push-") as tmp:
        staged = stage_folder(folder, tmp)
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(folder_path=str(staged), repo_id=repo_id, repo_type="model",
                              commit_message=commit_message)
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise ZooError(f"could not push {folder} to {repo_id}: {e} (logged in? `hf auth login` or pass "
                           "token=...)") from e
    return f"https://huggingface.co/{repo_id}"
