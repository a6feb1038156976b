"""The capture's pure parts: the output scanner held to a table of real-looking lines, step records,
the joined history, the CSV / TensorBoard / W&B followers, the W&B stand-in, and `presets capture`.

The lines are the public programs' own formats (pytorch/examples word_language_model and mnist,
nanoGPT's train.py and configurator.py, Keras 2 and 3 progress bars, tqdm, Lightning's bar, the
Hugging Face Trainer's log dicts, ImageNet-style meters): what `auto` takes from each, and what it
must leave (README "Metrics from a program as it is").
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.deck import REPO, cli, one_line
from trialdeck.engine.capture.files import CsvFollower, WandbFollower
from trialdeck.engine.capture.scanner import OutputScanner, failure_line
from trialdeck.engine.capture.session import STANDIN_DIR, capture_log
from trialdeck.engine.capture.steps import Observation, StepTable
from trialdeck.engine.catalogue.reported import ScriptHistory
from trialdeck.engine.presets.schema import CaptureConfig, RunSpec, expand, format_param

PROGRAMS = REPO / "tests" / "scripts" / "capture"

# (line, what auto records from it: (values, step, epoch), or None). Each block is one program's
# output, read in order by one scanner: a line's place may come from an earlier line.
CONTRACT: dict[str, list[tuple[str, tuple[dict, float | None, float | None] | None]]] = {
    "argparse and settings before the first step": [
        ("Namespace(batch_size=64, epochs=10, lr=0.1, seed=1)", None),
        ("number of parameters: 10.65M", None),
        ("tokens per iteration will be: 16,384", None),
        ("Overriding: learning_rate = 0.001", None),
        ("eval_interval = 250 # keep frequent because we'll overfit", None),
        ("Running with --lr 0.1 --epochs=3 --batch-size 64", None),
        ("2024-05-01 12:30:01,234 INFO starting at 12:30:01", None),
    ],
    "word_language_model": [
        ("| epoch   1 |   200/ 2983 batches | lr 20.00 | ms/batch 45.67 | loss  7.63 | ppl  2065.41",
         ({"lr": 20.0, "ms_batch": 45.67, "loss": 7.63, "ppl": 2065.41}, None, 1)),
        ("-" * 89, None),
        ("| end of epoch   1 | time: 140.31s | valid loss  6.91 | valid ppl   999.53",
         ({"time": 140.31, "valid_loss": 6.91, "valid_ppl": 999.53}, None, 1)),
        ("| End of training | test loss  5.00 | test ppl   148.41", ({"test_loss": 5.0, "test_ppl": 148.41}, None, 1)),
    ],
    "nanoGPT": [
        ("step 0: train loss 10.9883, val loss 10.9912", ({"train_loss": 10.9883, "val_loss": 10.9912}, 0, None)),
        ("iter 0: loss 10.9861, time 5123.45ms, mfu -100.00%", ({"loss": 10.9861, "time": 5123.45, "mfu": -100.0}, 0, None)),
        ("saving checkpoint to out-shakespeare-char", None),
        ("iter 10: loss 3.2761, time 40.12ms, mfu 12.34%", ({"loss": 3.2761, "time": 40.12, "mfu": 12.34}, 10, None)),
    ],
    "Keras 3 (ANSI colours, backspaces, `\\r` updates)": [
        ("Epoch 1/3", None),
        ("\x1b[1m 1/44\x1b[0m \x1b[32m\x1b[0m\x1b[37m━━━━━━━━━━━━━━━━━━━━\x1b[0m \x1b[1m3s\x1b[0m 70ms/step - loss: 2.3021",
         ({"loss": 2.3021}, None, 1)),
        ("\b\b\b\b\x1b[1m44/44\x1b[0m \x1b[32m━━━━━━━━━━━━━━━━━━━━\x1b[0m\x1b[37m\x1b[0m \x1b[1m1s\x1b[0m 12ms/step - accuracy: "
         "0.8700 - loss: 0.4321 - val_accuracy: 0.9500 - val_loss: 1.5000e-04",
         ({"accuracy": 0.87, "loss": 0.4321, "val_accuracy": 0.95, "val_loss": 1.5e-4}, None, 1)),
        ("Epoch 2/3", None),
        ("44/44 [==============================] - 1s 12ms/step - loss: 0.3000 - accuracy: 0.90 - val_loss: 0.1400",
         ({"loss": 0.3, "accuracy": 0.9, "val_loss": 0.14}, None, 2)),
    ],
    "Hugging Face Trainer (dicts, quoted numbers)": [
        ("  8%|▊         | 1/12 [00:01<00:11,  1.02s/it]", None),
        ("{'loss': 0.6931, 'grad_norm': 1.2345, 'learning_rate': 4.5e-05, 'epoch': 0.33}",
         ({"loss": 0.6931, "grad_norm": 1.2345, "learning_rate": 4.5e-05}, None, 0.33)),
        ("{'eval_loss': '0.69', 'eval_runtime': '1.2', 'eval_samples_per_second': '83.3', 'epoch': '3'}",
         ({"eval_loss": 0.69, "eval_runtime": 1.2, "eval_samples_per_second": 83.3}, None, 3)),
        ('{"epoch": 4, "loss": np.float64(0.25)}', ({"loss": 0.25}, None, 4)),
    ],
    "tqdm and Lightning's bar": [
        ("Sanity Checking DataLoader 0: 100%|██████████| 2/2 [00:00<00:00, 80.12it/s]", None),
        ("Epoch 0: 100%|██████████| 44/44 [00:01<00:00, 30.12it/s, v_num=0, train_loss=0.432]",
         ({"train_loss": 0.432}, None, 0)),
        ("Validation DataLoader 0: 100%|██████████| 11/11 [00:00<00:00, 80.30it/s]", None),
        ("Epoch 1:  50%|█████     | 22/44 [00:00<00:00, 30.12it/s, v_num=0, train_loss=0.301, val_loss=0.350]",
         ({"train_loss": 0.301, "val_loss": 0.35}, None, 1)),
        ("100%|██████████| 44/44 [00:01<00:00, 30.12it/s, loss=nan]", ({"loss": math.nan}, None, 1)),
    ],
    "pytorch/examples mnist, ImageNet meters, a logging prefix": [
        ("Train Epoch: 3 [0/60000 (0%)]\tLoss: 2.300532", ({"loss": 2.300532}, None, 3)),
        ("Test set: Average loss: 0.0311, Accuracy: 9899/10000 (99%)", ({"average_loss": 0.0311}, None, 3)),
        ("Epoch: [4][ 100/ 500]\tTime  0.123 ( 0.150)\tLoss 2.3456e+00 (2.5000e+00)\tAcc@1  45.00 ( 40.00)",
         ({"time": 0.123, "loss": 2.3456, "acc@1": 45.0}, None, 4)),
        (" * Acc@1 76.130 Acc@5 92.862", ({"acc@1": 76.13, "acc@5": 92.862}, None, 4)),
        ("2024-05-01 12:30:01,234 - INFO - epoch 5 loss 0.41 acc 0.93", ({"loss": 0.41, "acc": 0.93}, None, 5)),
        ("[12:30:02] eta: 0:01:23  time: 12:30:02", None),
        ("Epoch [6/10], Step [100/600], Loss: 0.2345", ({"loss": 0.2345}, 100, 6)),
        ("Epoch 00007: reducing learning rate of group 0 to 1.0000e-04.", None),
        ("Traceback (most recent call last):", None),
        ('  File "/home/me/train.py", line 72, in <module>', None),
        ("train.py:45: UserWarning: epoch 3 of 10 ran with lr 0.1", None),
    ],
}


def _same(got: Observation | None, want) -> bool:
    if want is None:
        return got is None or not got.values
    if got is None:
        return False
    values, step, epoch = want
    close = got.values.keys() == values.keys() and all(
        (math.isnan(v) and math.isnan(got.values[k])) if isinstance(v, float) and math.isnan(v)
        else got.values[k] == pytest.approx(v) for k, v in values.items())
    return close and got.step == step and got.epoch == epoch


@pytest.mark.parametrize("block", list(CONTRACT))
def test_the_scanner_takes_what_programs_print_and_leaves_the_rest(block):
    scanner = OutputScanner()
    for line, want in CONTRACT[block]:
        got = scanner.scan(line.replace("\r", ""))
        assert _same(got, want), f"{block}: {line!r}\n got  {got}\n want {want}"


def test_a_known_line_shape_is_read_the_same_as_a_new_one():
    """The shape cache (digits zeroed) gives every line of a shape its own numbers."""
    scanner = OutputScanner()
    for i in range(1, 6):
        got = scanner.scan(f"iter {i * 10}: loss {1 / i:.4f}, time {40 + i:.2f}ms, mfu {-i:.2f}%")
        assert got == Observation({"loss": round(1 / i, 4), "time": 40.0 + i, "mfu": float(-i)}, i * 10, None)
    assert scanner.scan("epoch 1 | layer1 loss 0.5").values == {"layer1_loss": 0.5}
    assert scanner.scan("epoch 1 | layer2 loss 0.7").values == {"layer2_loss": 0.7}  # a digit in a name: no sharing


def test_patterns_rename_and_output_modes():
    text = "Epoch 1/2\n| valid loss 3.50 | acc 0.1\nEpoch 2/2\n| valid loss 2.50 | acc 0.2\nscore=7\n"
    renamed = OutputScanner(rename={"valid_loss": "val_loss"}).feed(text)
    assert [o.values for o in renamed if o.values] == [{"val_loss": 3.5, "acc": 0.1}, {"val_loss": 2.5, "acc": 0.2},
                                                        {"score": 7}]
    only = OutputScanner("patterns", [r"valid loss\s+(?P<val_loss>[\d.]+)"]).feed(text)
    assert [(o.values, o.epoch) for o in only if o.values] == [({"val_loss": 3.5}, 1), ({"val_loss": 2.5}, 2)]
    stepless = OutputScanner("patterns", [r"score=(?P<score>\d+)"]).feed("score=1\nscore=2\n")
    assert [(o.values, o.key) for o in stepless] == [({"score": 1}, 1), ({"score": 2}, 2)]
    assert OutputScanner("off").feed(text) == []
    assert not OutputScanner("off").active


def test_step_records_merge_a_place_and_settle_file_sources():
    table = StepTable(settle=None)
    for obs in (Observation({"loss": 1.0}, None, 1), Observation({"loss": 0.9, "val_loss": 1.1}, None, 1),
                Observation({}, None, 2)):
        table.add(obs, 0.0)
    (first,) = table.take(0.0)
    assert first.to_line() == {"epoch": 1, "loss": 0.9, "val_loss": 1.1}
    assert table.flush() == []  # epoch 2 has no value yet
    files = StepTable(settle=0.5)
    files.add(Observation({"a": 1}, 7, None), 10.0)
    assert files.take(10.2) == []
    (settled,) = files.take(10.6)
    assert settled.to_line() == {"epoch": 7, "a": 1, "step": 7}
    files.add(Observation({"b": 2}, 7, None), 11.0)  # the same step again: emitted again, whole
    assert [r.to_line() for r in files.flush()] == [{"epoch": 7, "a": 1, "b": 2, "step": 7}]
    thin = StepTable(thin_after=3)  # a program logging every step: the history keeps an even summary
    for step in range(20):
        thin.add(Observation({"loss": 1.0 / (step + 1)}, step, None))
    thin.add(Observation({"loss": 0.01, "val_loss": 0.02}, 21, None))  # an evaluation is always kept
    assert [r.key for r in thin.flush()] == [0, 1, 2, 4, 6, 8, 12, 16, 21] and thin.thinned == 12
    hf = [Observation({"loss": 0.7}, None, 0.5), Observation({"loss": 0.6}, None, 1.0),
          Observation({"eval_loss": 0.65}, None, 1.0), Observation({"loss": 0.5}, None, 1.5)]
    assert [o.key for o in hf] == [1, 1, 1, 2]  # a fractional epoch counts toward the epoch it is in


def test_reported_values_win_and_a_source_that_goes_back_replaces_only_its_own():
    history = ScriptHistory()
    history.add_from("reported", {"epoch": 1, "val_loss": 1.0})
    change = history.add_from("output", {"epoch": 1, "val_loss": 9.0, "loss": 2.0})
    assert change.how == "changed" and history.entries == [{"epoch": 1, "val_loss": 1.0, "loss": 2.0}]
    history.add_from("output", {"epoch": 2, "loss": 1.5})
    history.add_from("reported", {"epoch": 2, "val_loss": 0.8})
    history.new_attempt()  # the program restarts: its first printed epoch is 1 again
    change = history.add_from("output", {"epoch": 1, "loss": 5.0})
    assert change.how == "rewound" and change.restarted and change.replaced == (1, 2)
    assert history.entries == [{"epoch": 1, "loss": 5.0, "val_loss": 1.0}, {"epoch": 2, "val_loss": 0.8}]


def test_the_csv_follower_reads_rows_as_they_come_and_a_rewritten_header(tmp_path):
    path = tmp_path / "version_0" / "metrics.csv"
    path.parent.mkdir()
    start = time.time()
    follower = CsvFollower(str(tmp_path / "*" / "metrics.csv"), start, {"val_loss": "vl"})
    path.write_text("epoch,step,train_loss\n0,49,0.9\n0,99,0.8\n1,1")  # a row being written
    assert [(o.values, o.step, o.epoch) for o in follower.poll()] == [({"train_loss": 0.9}, 49, 0), ({"train_loss": 0.8}, 99, 0)]
    # Lightning rewrites the file with the new column (old rows keep empty cells).
    path.write_text("epoch,step,train_loss,val_loss\n0,49,0.9,\n0,99,0.8,\n0,99,,0.75\n1,149,0.7,\n")
    assert [(o.values, o.step, o.epoch) for o in follower.poll()] == [({"vl": 0.75}, 99, 0), ({"train_loss": 0.7}, 149, 1)]
    old = tmp_path / "old" / "metrics.csv"
    old.parent.mkdir()
    old.write_text("epoch,loss\n1,5\n")
    os.utime(old, (start - 3600, start - 3600))  # an earlier run's log: not this run's
    assert follower.poll() == []


def test_the_wandb_stand_in_logs_rows_at_wandb_steps_with_the_standard_library_only(tmp_path):
    rows = tmp_path / "wandb.jsonl"
    program = tmp_path / "p.py"
    program.write_text(
        "import sys, wandb\n"
        "assert 'trialdeck' not in sys.modules and wandb.__file__.startswith(sys.argv[1])\n"
        "run = wandb.init(project='p', config={'lr': 0.1})\n"
        "assert wandb.config.lr == 0.1 and wandb.run is run\n"
        "wandb.log({'iter': 0, 'train/loss': 2.0, 'val/loss': 2.5, 'img': wandb.Image(None)})\n"
        "wandb.log({'loss': 1.5}, step=10)\n"
        "wandb.log({'acc': 0.5}, step=10)\n"
        "wandb.log({'loss': 9.0}, step=3)\n"  # below the current step: ignored, as W&B does
        "run.log({'nested': {'a': 1}}, commit=False)\n"
        "wandb.define_metric('loss', summary='min')\n"
        "wandb.finish()\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] not in sys.stdlib_module_names and m not in ('wandb', '__main__')))\n")
    env = {**os.environ, "PYTHONPATH": str(STANDIN_DIR), "TRIALDECK_WANDB": str(rows)}
    proc = subprocess.run([sys.executable, "-S", str(program), str(STANDIN_DIR)], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"  # nothing imported but the standard library and the stand-in
    assert proc.stderr.count("wandb.Image is not supported offline") == 1
    assert "wandb.define_metric is not supported" in proc.stderr and "step 3 is below the current step 10" in proc.stderr
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    # Step 10's row stays open until the step moves on or finish(): commit=False adds to it, as in W&B.
    assert lines == [{"_step": 0, "_explicit": False, "iter": 0, "train/loss": 2.0, "val/loss": 2.5},
                     {"_step": 10, "_explicit": True, "loss": 1.5, "acc": 0.5, "nested/a": 1}]
    got = [(o.values, o.step) for o in WandbFollower(rows).poll(final=True)]
    assert got == [({"train_loss": 2.0, "val_loss": 2.5}, 0), ({"loss": 1.5, "acc": 0.5, "nested_a": 1}, 10)]


def test_the_tensorboard_follower_reads_a_summary_writer_as_it_flushes(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed (pip install 'trialdeck[tensorboard]')")
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from trialdeck.engine.capture.tboard import TensorBoardFollower

    follower = TensorBoardFollower(tmp_path / "runs", time.time(), {"loss_val": "val_loss"})
    assert follower.poll() == []  # the folder does not exist yet
    writer = SummaryWriter(str(tmp_path / "runs" / "a"))
    writer.add_scalar("Loss/train", 0.5, 1)
    writer.add_scalar("Loss/val", 0.6, 1)
    writer.add_histogram("weights", torch.tensor([1.0, 2.0]), 1)  # not a metric
    writer.flush()
    assert [(o.values, o.step) for o in follower.poll()] == [({"loss_train": 0.5, "val_loss": pytest.approx(0.6)}, 1)]
    writer.add_scalar("Loss/val", 0.4, 2)
    writer.flush()
    other = SummaryWriter(str(tmp_path / "runs" / "b"))  # a new file appears under the folder
    other.add_scalar("epoch", 3, 7)
    other.add_scalar("acc", 0.9, 7)
    other.flush()
    got = [(o.values, o.step, o.epoch) for o in follower.poll()]
    assert got == [({"val_loss": pytest.approx(0.4)}, 2, None), ({"acc": pytest.approx(0.9)}, 7, 3)]
    writer.close()
    other.close()


def test_a_failure_reason_is_the_exception_line_of_the_last_traceback():
    tail = ("loading...\nTraceback (most recent call last):\n  File \"t.py\", line 3, in <module>\n    x = 1 / 0\n"
            "        ~~^~~\nZeroDivisionError: division by zero\n\nDuring handling of the above exception, another "
            "exception occurred:\n\nTraceback (most recent call last):\n  File \"t.py\", line 5, in <module>\n"
            "    raise ValueError('loss diverged at epoch 3')\nValueError: loss diverged at epoch 3\n"
            "hint: rerun with a lower learning rate\n")
    assert failure_line(tail) == "ValueError: loss diverged at epoch 3"
    assert failure_line("error: no such file\n\n") == "error: no such file"
    assert failure_line("") is None


def test_placeholders_run_dir_and_python_booleans():
    params = {"compile": False, "wandb_log": True, "sizes": [1, 2], "lr": 0.1}
    assert expand("--compile={params.compile:py}", params) == "--compile=False"
    assert expand("--wandb_log={params.wandb_log:py} {params.wandb_log}", params) == "--wandb_log=True true"
    assert expand("{params.sizes:py}|{params.lr:py}", params) == "[1, 2]|0.1"
    assert expand("--out={run_dir}/ckpt.pt", params, "/runs/r1/files") == "--out=/runs/r1/files/ckpt.pt"
    assert expand("--out={run_dir}", params) == "--out={run_dir}"  # a preview before the run exists
    assert format_param(True, python=True) == "True"
    spec = RunSpec.model_validate({"script": {"command": ["python3", "t.py", "--out", "{run_dir}"],
                                              "resume_args": ["--init_from=resume", "--ckpt={run_dir}/c.pt"]}})
    assert spec.script is not None
    assert spec.script.argv({}, "/r") == ["python3", "t.py", "--out", "/r"]
    assert spec.script.argv({}, "/r", resume=True)[-2:] == ["--init_from=resume", "--ckpt=/r/c.pt"]
    assert "capture" not in spec.config()["script"]  # unset keys stay out of older configs and hashes


@pytest.mark.parametrize("capture, key", [
    ('output = "loud"', "script.capture.output"),
    ("patterns = ['valid loss (\\\\d+']", "script.capture.patterns"),
    ("patterns = ['valid loss \\\\d+']", "no named group"),
    ('output = "patterns"', "reads only the patterns"),
    ('rename = { valid_loss = "val loss" }', "script.capture.rename"),
    ("colour = 1", "'colour' in [script.capture]"),
])
def test_a_bad_capture_table_is_one_line_naming_the_key(tmp_path, capture, key):
    path = tmp_path / "bad.toml"
    path.write_text(f'[script]\ncommand = ["python3", "t.py"]\n[script.capture]\n{capture}\n')
    proc = cli(tmp_path / "ws", "presets", "validate", str(path))
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert str(path) in line and key in line, line


def test_presets_capture_prints_each_forms_values_at_their_steps(tmp_path):
    """`presets capture` on saved logs of the test programs: exactly the printed values, at the printed steps."""
    preset = tmp_path / "p.toml"
    preset.write_text('[script]\ncommand = ["python3", "wlm.py"]\n[script.capture]\nrename = { valid_loss = "val_loss" }\n')
    logs = {}
    for form in ("wlm", "keras", "hf"):
        proc = subprocess.run([sys.executable, f"{form}.py", "--epochs", "3", "--plateau", "2"], cwd=PROGRAMS,
                              capture_output=True, text=True, timeout=60)
        logs[form] = tmp_path / f"{form}.log"
        logs[form].write_text(proc.stdout + proc.stderr)
    out = {form: json.loads(cli(tmp_path / "ws", "presets", "capture", str(preset), str(path), "--json").stdout)
           for form, path in logs.items()}
    assert out["wlm"]["names"] == ["lr", "ms_batch", "loss", "ppl", "time", "val_loss", "valid_ppl", "test_loss", "test_ppl"]
    assert [(s["step"], s["epoch"], s["val_loss"], s["loss"]) for s in out["wlm"]["steps"]] == [
        (1, 1, 1.1, 1.0), (2, 2, 0.6, 0.55), (3, 3, 0.65, 0.6)]  # the last batch line's loss, the epoch's valid loss
    assert out["keras"] == {"names": ["loss", "val_loss"], "steps": [
        {"step": 1, "epoch": 1, "loss": 0.99, "val_loss": 1.1}, {"step": 2, "epoch": 2, "loss": 0.54, "val_loss": 0.6},
        {"step": 3, "epoch": 3, "loss": 0.585, "val_loss": 0.65}]}
    assert [(s["epoch"], s["eval_loss"], s["loss"]) for s in out["hf"]["steps"]] == [(1, 1.1, 0.99), (2, 0.6, 0.54),
                                                                                       (3, 0.65, 0.585)]
    table = cli(tmp_path / "ws", "presets", "capture", str(preset), str(logs["keras"]))
    assert table.returncode == 0 and table.stdout.splitlines()[0].split() == ["step", "epoch", "loss", "val_loss"]
    assert table.stdout.splitlines()[1].split() == ["1", "1", "0.9900", "1.1000"]
    not_script = tmp_path / "b.toml"
    not_script.write_text('[train]\nepochs = 1\n')
    proc = cli(tmp_path / "ws", "presets", "capture", str(not_script), str(logs["keras"]))
    assert proc.returncode == 2 and "not a script preset" in one_line(proc.stderr)
    proc = cli(tmp_path / "ws", "presets", "capture", str(preset), str(tmp_path / "nope.log"))
    assert proc.returncode == 2 and "no such file" in one_line(proc.stderr)


def test_a_saved_run_log_is_read_without_the_engines_own_lines():
    text = ("12:00:01 worker 4242 starting r1 on cpu: python3 t.py (in /tmp)\nEpoch 1/2\nloss: 0.5 - val_loss: 0.4\n"
            "12:00:02 [epoch 1] early_stopped: val_loss did not improve by more than 0 for 2 epochs; best 0.5000 at "
            "epoch 3; the script was asked to stop\n12:00:03 the script was asked to stop (early_stopped)\n")
    assert capture_log(CaptureConfig(), text) == [{"step": 1, "epoch": 1, "loss": 0.5, "val_loss": 0.4}]


def test_the_program_is_the_one_on_the_queuing_shells_path(tmp_path, monkeypatch):
    from trialdeck.engine.errors import PresetError
    from trialdeck.engine.presets.inputs import check_inputs
    from trialdeck.engine.presets.loader import resolve

    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python-of-mine"
    fake.write_text("#!/bin/sh\nexec python3 \"$@\"\n")
    fake.chmod(0o755)
    preset = tmp_path / "p.toml"
    preset.write_text('[script]\ncommand = ["python-of-mine", "t.py"]\n')
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = resolve(str(preset))
    assert spec.script is not None and spec.script.program == str(fake)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    spec = resolve(str(preset))
    with pytest.raises(PresetError, match="'python-of-mine' is not on your PATH"):
        check_inputs(spec)
    assert shutil.which("python-of-mine") is None


def test_a_tensorboard_capture_is_refused_at_enqueue_without_the_extra(tmp_path, monkeypatch):
    import importlib.util

    from trialdeck.engine.errors import PresetError
    from trialdeck.engine.presets.inputs import check_inputs

    spec = RunSpec.model_validate({"script": {"command": ["/bin/true"], "capture": {"tensorboard": "lightning_logs"}}})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(PresetError, match=r"script.capture.tensorboard needs .*pip install 'trialdeck\[tensorboard\]'"):
        check_inputs(spec)


def test_presets_capture_reads_event_files_csv_logs_and_the_wandb_stand_ins_lines(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[script]\ncommand = ["python3", "t.py"]\n[script.capture]\nrename = { loss_val = "val_loss" }\n')
    csv_log = tmp_path / "metrics.csv"
    csv_log.write_text("epoch,step,train_loss,val_loss\n0,49,0.9,\n0,87,,0.7\n1,99,0.6,\n1,175,,0.5\n")
    got = json.loads(cli(tmp_path / "ws", "presets", "capture", str(preset), str(csv_log), "--json").stdout)
    assert got == {"names": ["train_loss", "val_loss"], "steps": [
        {"step": 87, "epoch": 0, "train_loss": 0.9, "val_loss": 0.7},
        {"step": 175, "epoch": 1, "train_loss": 0.6, "val_loss": 0.5}]}
    rows = tmp_path / "wandb.jsonl"
    env = {**os.environ, "PYTHONPATH": str(STANDIN_DIR), "TRIALDECK_WANDB": str(rows)}
    subprocess.run([sys.executable, "wb.py", "--epochs", "2"], cwd=PROGRAMS, env=env, check=True, capture_output=True,
                   timeout=60)
    got = json.loads(cli(tmp_path / "ws", "presets", "capture", str(preset), str(rows), "--json").stdout)
    assert got["names"] == ["train_loss", "val_loss", "lr"]
    assert [(s["step"], s["epoch"], s["val_loss"]) for s in got["steps"]] == [(100, None, 1.1), (200, None, 0.6)]
    if importlib.util.find_spec("tensorboard") is None:
        pytest.skip("the tensorboard extra is not installed (pip install 'trialdeck[tensorboard]')")
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "runs" / "exp"))
    for step in (1, 2):
        writer.add_scalar("Loss/val", 1.0 / step, step)
    writer.close()
    got = json.loads(cli(tmp_path / "ws", "presets", "capture", str(preset), str(tmp_path / "runs"), "--json").stdout)
    assert got == {"names": ["val_loss"], "steps": [{"step": 1, "epoch": None, "val_loss": 1.0},
                                                    {"step": 2, "epoch": None, "val_loss": 0.5}]}


def test_runs_show_prints_integers_as_integers_and_small_values_in_significant_digits(capsys):
    from trialdeck.tui.cli.runs import print_history
    from trialdeck.tui.live import value_text

    assert [value_text(v) for v in (50, 4.76e-05, 6.58e-05, 0.4321, 2065.41, 0.0, None, True)] == [
        "50", "4.76e-05", "6.58e-05", "0.4321", "2065.4100", "0.0000", "-", "true"]
    print_history({"config": {"script": {"command": ["x"]}},
                   "history": [{"epoch": 1, "iter": 50, "lr": 4.76e-05, "val_loss": 6.58e-05}]})
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["epoch", "iter", "lr", "val_loss"] and row.split() == ["1", "50", "4.76e-05", "6.58e-05"]


def test_runs_follow_after_a_script_went_back_says_so_instead_of_a_trainers_start(capsys):
    from trialdeck.tui.cli.run import _follow_lines

    items = [{"kind": "start", "device": "cpu", "params": None, "command": ["python3", "t.py"], "resumed": True,
              "start_epoch": 4},
             {"kind": "start", "device": "cpu", "params": None, "rewound": 3},
             {"kind": "epoch", "epoch": 3, "loss": 0.5, "iter": 300},
             {"kind": "final", "record": {"id": "r1", "state": "completed"}}]
    _follow_lines("r1", False, iter(items))
    out = capsys.readouterr().out
    assert "r1 running on cpu: python3 t.py, resuming after epoch 4" in out
    assert "(epochs from 3 on are recorded again)" in out and "parameters" not in out and "None" not in out
    assert "epoch 3  loss 0.5000  iter 300" in out
