"""What the config layer knows of a body without loading it: the supported model types, the
small random test configs, the full-size architectures shipped with xmodal (`architectures/`:
the paper's bodies, buildable with random weights offline), and a body's family read from its
`config.json` as plain JSON (never through transformers), so the study planner can group runs
without importing torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

TEXT_TYPES = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")
VISION_TYPES = ("vit", "swin")
BUNDLED = {"minilm": "bert"}      # the offline default: all-MiniLM-L6-v2, a BERT encoder

# Small random configs: exercise the vision families without any download.
RANDOM_CONFIGS = {
    "vit-tiny-random": dict(model_type="vit", hidden_size=64, num_hidden_layers=2,
                            num_attention_heads=4, intermediate_size=128, image_size=32,
                            patch_size=4, num_channels=3),
    "swin-tiny-random": dict(model_type="swin", embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                             window_size=4, image_size=32, patch_size=4, num_channels=3),
    "bert-tiny-random": dict(model_type="bert", hidden_size=64, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=128,
                             max_position_embeddings=128, vocab_size=1000),
}
VISION_HINTS = ("vit", "swin", "deit", "beit", "image")

# The paper's bodies: hub name -> the architecture file shipped in config/architectures/.
SWIN_BASE = "swin-base-patch4-window7-224.json"
SHIPPED_ARCHITECTURES = {
    "roberta-base": "roberta-base.json",
    "FacebookAI/roberta-base": "roberta-base.json",
    "nyu-mll/roberta-base-1B-2": "roberta-base.json",     # the MiniBERTas share RoBERTa-base's
    "nyu-mll/roberta-base-100M-3": "roberta-base.json",
    "nyu-mll/roberta-base-10M-3": "roberta-base.json",
    "microsoft/swin-base-patch4-window7-224-in22k": SWIN_BASE,
    "microsoft/swin-base-patch4-window7-224": SWIN_BASE,
}


def shipped_architecture(name: str) -> Optional[dict]:
    """The shipped config.json values of a paper body, without the `_comment` keys (None: not
    shipped, or `name` is a local folder, whose own config.json wins)."""
    file = SHIPPED_ARCHITECTURES.get(name)
    if file is None or Path(name).expanduser().is_dir():
        return None
    raw = json.loads((Path(__file__).parent / "architectures" / file).read_text(encoding="utf-8"))
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def model_type(name: str) -> Optional[str]:
    """The `model_type` of a body name, from what is on this machine (None: unknown here)."""
    if name in BUNDLED:
        return BUNDLED[name]
    if name in RANDOM_CONFIGS:
        return RANDOM_CONFIGS[name]["model_type"]
    shipped = shipped_architecture(name)
    if shipped is not None:
        return shipped["model_type"]
    for path in _config_files(name):
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def body_family(name: str) -> str:
    """`text` or `vision`: from the model type where known, else from the name."""
    mt = model_type(name)
    if mt is not None:
        return "vision" if mt in VISION_TYPES else "text"
    return "vision" if any(k in name.lower() for k in VISION_HINTS) else "text"


def _config_files(name: str) -> list[Path]:
    """`config.json` of a local folder, or of a hub name's snapshots in the Hugging Face cache."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return [folder / "config.json"]
    hub = Path(os.environ.get("HF_HUB_CACHE") or
               Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")
    repo = hub.expanduser() / f"models--{name.replace('/', '--')}" / "snapshots"
    return sorted(repo.glob("*/config.json")) if repo.is_dir() else []
