"""Reports of a study folder: figures (PNG), `report.md` and `report.html` in DIR/report/.

Everything is read from the study store (`DIR/study.db`, via `data.load_parts`). Each part of
the study gets a section from the module of its experiment:

- `rq1_proxy` (proxy): curves per proxy and for naive fine-tuning (paper Fig. 2);
- `rq2_align_epochs` (align-epochs): OTDD and downstream error per embedder epoch (Fig. 3);
- `rq3_freezing` (freezing): curves per freezing mode, trained vs untrained embedder (Fig. 4);
- `rq4_pretraining` (pretraining): error vs pre-training amount, random init included (Fig. 5);
- `custom`: curves and final metrics per label;
- `provenance`: the base config, each setting's differences and seeds, the recorded code and
  machine (the last section).

`single_run` writes the report of one run folder (`xmodal report RUN_DIR`).

Every number and verdict in the text is computed from the stored results (`..stats`).
`render` writes report.md and renders report.html from that same markdown.
"""

from .render import build_sections, write_report
from .single_run import is_run_folder, write_run_report

__all__ = ["build_sections", "is_run_folder", "write_report", "write_run_report"]
