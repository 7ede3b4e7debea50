"""`diff2in1 reproduce`: the whole method on a dataset with the research recipe, in one command.

Stages (docs/method.md sections 5-9), each writing the folder its own command writes:

    captions      <data>/train/caption/<id>.txt, only where missing (needs --caption-model)
    warm-up       <out>/warmup          (train-warmup; final head <out>/warmup/head)
    creation      <out>/synthetic       (create-data with the warm-up head)
    self-improve  <out>/self_improve    (train-self-improve; heads exploitation/ and creation/)
    evaluation    <out>/eval_warmup, eval_exploitation, eval_creation (evaluate, test split)
    report        <out>/report.md       (metrics beside the published numbers, with sources)

Every hyper-parameter comes from one YAML file (`configs/reproduce.yaml`, or `--config`), copied
to `<out>/reproduce.yaml`. Running the same command again continues where it stopped: a stage
whose final output exists is skipped, an interrupted one resumes through its own resume (training
state, finished synthetic samples). Under `torchrun` / `accelerate launch` every stage uses every
process, as the single commands do.

With more tasks (the stage sections' `tasks`, `--tasks normals,depth,segmentation`) every stage
trains, creates and evaluates one head per task on one backbone pass, on the package's layout with
depth/seg folders or on a NYUD-MT folder (`multitask_data.py`; docs/multitask.md).

`dry_run=True` runs every stage on a handful of images at 64x64 with the shipped `tiny-scenes`
backbone into `<out>/dry_run` (seconds on a CPU); `plan()` prints the cost of a run per stage.
"""

from .cost_plan import plan, plan_stages
from .recipe import (
    HEADS,
    ReproduceResult,
    StageConfigs,
    complete,
    head_folder,
    stage_configs,
    tasks_of,
    with_flags,
)
from .report import published_rows, report_text
from .run import run_reproduce

__all__ = [
    "HEADS",
    "ReproduceResult",
    "StageConfigs",
    "complete",
    "plan",
    "plan_stages",
    "published_rows",
    "report_text",
    "run_reproduce",
    "stage_configs",
    "tasks_of",
    "with_flags",
    "head_folder",
]
