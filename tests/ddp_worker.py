"""Run by tests/test_distributed.py under torchrun (not a test module itself).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py \
        ROOT OUT [--resume] [--kill-after-epoch N]

Trains the small celebnet of conftest.small_train_config with gloo; each rank writes
``OUT/rank<r>.sha256``, a digest of its final weights. ``--kill-after-epoch N`` makes rank 0
SIGKILL itself once epoch N's checkpoint is written (torchrun then stops the others).
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import faceattr.engine.fit as fit_mod  # noqa: E402
from conftest import small_train_config  # noqa: E402
from faceattr.progress import EpochEnd, Progress  # noqa: E402


class KillAfter(Progress):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_end(self, event: EpochEnd) -> None:
        if event.epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    resume = "--resume" in sys.argv
    kill = (
        int(sys.argv[sys.argv.index("--kill-after-epoch") + 1])
        if "--kill-after-epoch" in sys.argv
        else None
    )
    finish = fit_mod.finish

    def digest_then_finish(t, *args, **kwargs):
        h = hashlib.sha256()
        for value in t.model.state_dict().values():
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        (out.parent / f"{out.name}.rank{t.dist.rank}.sha256").write_text(h.hexdigest())
        return finish(t, *args, **kwargs)

    fit_mod.finish = digest_then_finish
    progress = KillAfter(kill) if kill else None
    if resume:
        fit_mod.resume(out, progress=progress)
    else:
        fit_mod.fit(small_train_config(root, out, epochs=2, batch_size=16), progress=progress)


if __name__ == "__main__":
    main()
