"""Studies: a grid of runs from one YAML spec, run resumably into a study folder, then reported.

The package, in the order a study goes through it:

- `spec`: load and validate a spec (built-in `xmodal/studies/*.yaml`, a file or a dict) and
  expand it into a `Plan` of runs (pure: no folder, no store);
- `runner`: record the plan in the store and work through it, in-process or in worker
  processes (`execute` runs one job); `cluster`: the same on a Ray cluster (`RayPool`);
- `store`: the SQLite results store `DIR/study.db`; `liveness`: whether the process holding a
  run is still alive; `export`: the CSV export of the store;
- `commands`: the `xmodal study list|run|status|export` subcommands;
- `stats`: the statistics the report uses (scipy.stats);
- `report`: figures, `report.md` and `report.html`, one module per research question.

Imports go one way: commands -> (runner, export) -> (spec, execute, store, cluster); store ->
liveness; report -> (store, stats); cluster -> (execute, liveness).
"""

from .commands import cli, export_csv, list_text, status_text
from .execute import available_cores
from .runner import Outcome, prepare_dir, run_study
from .plan import Plan, PlannedRun, expand
from .spec import builtin_names, load_spec, validate_spec

__all__ = ["Outcome", "Plan", "PlannedRun", "available_cores", "builtin_names", "cli",
           "expand", "export_csv", "list_text", "load_spec", "prepare_dir", "run_study",
           "status_text", "validate_spec"]
