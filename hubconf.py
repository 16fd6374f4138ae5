"""torch.hub entry points: `torch.hub.load("ORG/ssl-zoo", "dino_vits16")`, one per built-in registry name.

Each returns `zoo.load(name)`: the authors' weights, downloaded once into the zoo cache, converted to timm key
names and cached as a model folder. `pretrained=False` returns the same architecture with random weights.
"""

dependencies = ["torch", "timm", "safetensors", "huggingface_hub", "tqdm"]

from zoo import build_encoder as _build_encoder  # noqa: E402 (torch.hub reads `dependencies` first)
from zoo import load as _load  # noqa: E402
from zoo.registry import BUILTIN as _BUILTIN  # noqa: E402


def _entry(spec):
    def entry(pretrained: bool = True, device: str | None = None, **kwargs):
        if not pretrained:
            return _build_encoder(spec.arch, preprocessing=spec.preprocessing, **spec.model_args, **kwargs)
        return _load(spec.name, device=device)

    reported = ", ".join(f"{r.metric} {r.value}" for r in spec.reported)
    entry.__name__ = spec.name
    entry.__doc__ = (f"{spec.method} {spec.arch} on {spec.dataset} ({spec.paper}). "
                     f"Reported by the authors: {reported or 'nothing'}.")
    return entry


for _spec in _BUILTIN:
    globals()[_spec.name] = _entry(_spec)
