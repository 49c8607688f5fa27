"""Teacher-output cache on 2 CPU processes, run by tests/test_teacher_cache.py.

Launched with :func:`tests.helpers.launch.two_process_launch` as ``teacher_cache_script.py OUT_DIR``
(repository root on ``PYTHONPATH``): every rank calls :func:`hf_msd.precompute_teacher_outputs` on the same
data with ``cache_dir=OUT_DIR/cache`` and writes ``OUT_DIR/rank<k>.json``: how many examples its teacher ran
on, the cached column and the fingerprint."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from accelerate import PartialState

from hf_msd import MultimodalDataCollator, precompute_teacher_outputs
from tests.helpers.models import raw_dataset, tiny_model, tiny_processor


def main(out_dir: Path) -> None:
    processor = tiny_processor(out_dir / f"processor{os.environ['RANK']}")
    teacher = tiny_model(seed=0)
    sizes: list[int] = []
    teacher.register_forward_hook(lambda module, args, output: sizes.append(len(output.logits)))
    collator = MultimodalDataCollator(processor, max_length=8)
    cache_dir = out_dir / "cache"
    result = precompute_teacher_outputs(teacher, raw_dataset(), data_collator=collator, cache_dir=cache_dir)
    state = PartialState()  # set up by precompute_teacher_outputs (a CPU teacher: gloo)
    record = {
        "world_size": state.num_processes,
        "teacher_examples": sum(sizes),
        "teacher_logits": result["teacher_logits"][:],
        "fingerprint": result._fingerprint,
    }
    (out_dir / f"rank{state.process_index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
