"""Issue 29's input cases (labels, bench sizes, odd files, odd models): each prepares a folder as a user would leave
it, names the `compress` command to run there, and what must come of it (bench/reliability_inputs.py runs them;
tests/test_trust_inputs.py, case by case)."""

from __future__ import annotations

import codecs
import subprocess
import sys
from pathlib import Path

from bench.reliability_cases import TEXTS, _data_copy, _labelled, _model_copy, _recipe
from bench.reliability_inputs import TIMEOUT, Case, Inputs, env

# ---------------------------------------------------------------- preparing the cases


def _dry_run(work: Path, inputs: Inputs, *settings: str) -> list[str]:
    return ["run", str(_recipe(work, inputs)), "--dry-run", *(a for s in settings for a in ("--set", s))]


def _init(work: Path, inputs: Inputs, name: str) -> list[str]:
    return ["init", "--teacher", str(inputs.model), "--data", str(inputs.texts), "--name", name,
            "--out", str(work / "new.yaml")]


def _init_named(work: Path, inputs: Inputs, name: str) -> list[str]:
    """`compress init --name NAME` of the tiny model and texts, then the dry run that shows the name it reads."""
    proc = subprocess.run([sys.executable, "-m", "compress.cli", *_init(work, inputs, name)],
                          cwd=work, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"compress init exited {proc.returncode}: {proc.stderr[-300:]}")
    return ["run", str(work / "new.yaml"), "--dry-run"]


def _nan_weights(model: Path) -> None:
    """One weight tensor of the second layer set to NaN (a diverged training, a damaged checkpoint)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    name = next(k for k in sorted(tensors) if ".layer.1." in k and k.endswith("dense.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, model / "model.safetensors", metadata={"format": "pt"})


def _one_class_held_out(work: Path, inputs: Inputs) -> list[str]:
    """Labels "a" and "b", every held-out row (data.seed 0's split, as compress/data.py draws it) an "a"."""
    import numpy as np

    held = set(np.random.default_rng(0).permutation(len(TEXTS))[:16].tolist())
    return _classified(work, inputs, [(t, "a" if n in held else "ab"[n % 2]) for n, t in enumerate(TEXTS)])


def _fixed_batch_onnx(work: Path, inputs: Inputs) -> list[str]:
    """The tiny model exported with fixed [2, 16] inputs (no PyTorch weights left), quantized and benched."""
    import shutil
    import warnings

    import torch
    from transformers import BertModel

    folder = work / "fixed"
    shutil.copytree(inputs.model, folder)
    model = BertModel.from_pretrained(folder).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    sample = (torch.ones(2, 16, dtype=torch.long), torch.ones(2, 16, dtype=torch.long))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapper(), sample, str(folder / "model.onnx"), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False)
    (folder / "model.safetensors").unlink()
    recipe = _recipe(work, inputs, model=str(folder))
    text = recipe.read_text()
    recipe.write_text(text[: text.index("stages:")] + "stages:\n  - {kind: quantize, schemes: [int8-dynamic]}\n"
                      "  - {kind: bench, batch_sizes: [1, 4], seq_lens: [128], warmup: 0, min_iterations: 2, "
                      "min_seconds: 0, rounds: 1}\n")
    return ["run", str(recipe), "--out", str(work / "run")]


def _with_seq_lens(work: Path, inputs: Inputs, lengths: str) -> Path:
    recipe = _recipe(work, inputs)
    recipe.write_text(recipe.read_text().replace("seq_lens: [16]", f"seq_lens: {lengths}"))
    return recipe


def _odd_data(work: Path, inputs: Inputs, data: bytes) -> list[str]:
    path = work / "d.csv"
    path.write_bytes(data)
    return ["validate", str(_recipe(work, inputs, texts=str(path)))]


def _classified(work: Path, inputs: Inputs, rows: list[tuple[str, str]]) -> list[str]:
    """A text-classification run of the tiny model (an encoder without a head: 2 classes, LABEL_0 and LABEL_1)
    on labelled texts."""
    args = _data_copy(work, inputs, "d.csv", _labelled(rows))
    recipe = work / "r.yaml"
    recipe.write_text(recipe.read_text().replace("task: sentence-embedding", "task: text-classification"))
    return args


def _own_answers(work: Path, inputs: Inputs) -> list[str]:
    """A classifier named {0: "b", 1: "a"} (not the sorted order) and texts labelled with its own answers: its
    accuracy is 1 when labels go through its id2label, 0 when they are numbered by sorted name."""
    import shutil

    import torch
    from transformers import BertForSequenceClassification

    from compress.tasks.common import TextInputs

    model_dir = work / "model"
    shutil.copytree(inputs.model, model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir, id2label={0: "b", 1: "a"},
                                                          label2id={"b": 0, "a": 1}).eval()
    encoded = TextInputs(model_dir).encode(TEXTS, 128)
    with torch.no_grad():
        pooled = model.bert(**{k: torch.from_numpy(v) for k, v in encoded.items() if not k.startswith("_")}
                            ).pooler_output
    # The head answers by which side of the median the text's pooled output lies along its main direction.
    centred = pooled - pooled.mean(0)
    direction = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    score = (centred @ direction).sort().values
    middle = float(score[len(score) // 2 - 1] + score[len(score) // 2]) / 2
    weight = direction * 1000
    bias = -(float(pooled.mean(0) @ direction) + middle) * 1000
    with torch.no_grad():
        model.classifier.weight.copy_(torch.stack([weight, -weight]))
        model.classifier.bias.copy_(torch.tensor([bias, -bias]))
    model.save_pretrained(model_dir)
    answers = ["b" if float((p - pooled.mean(0)) @ direction) > middle else "a" for p in pooled]
    args = _classified(work, inputs, list(zip(TEXTS, answers)))
    recipe = work / "r.yaml"
    recipe.write_text(recipe.read_text().replace(str(inputs.model), str(model_dir)))
    return args


UTF16 = codecs.BOM_UTF16_LE + "text,label\nthe movie was good,pos\nthe movie was bad,neg\n".encode("utf-16-le")
BINARY = bytes(range(1, 256)) * 40 + b"\0" + bytes(range(256)) * 10  # no newline in the first 6 KB


CASES: list[Case] = [
    # --- bench sizes refused before anything runs (F11)
    Case("bench_batch_size_zero", "`--set stages.2.batch_sizes=[0]` refused by --dry-run",
         lambda w, i: _dry_run(w, i, "stages.2.batch_sizes=[0]"), 2, "batch sizes must be at least 1"),
    Case("bench_batch_size_negative", "`--set stages.2.batch_sizes=[-1]` refused by --dry-run",
         lambda w, i: _dry_run(w, i, "stages.2.batch_sizes=[-1]"), 2, "batch sizes must be at least 1"),
    Case("bench_threads_negative", "`--set stages.2.threads=[-1]` refused by --dry-run",
         lambda w, i: _dry_run(w, i, "stages.2.threads=[-1]"), 2, "thread counts must be 0"),
    # --- init writes YAML that reads back (F19)
    Case("init_name_with_hash", "`compress init --name \"foo #bar\"` (YAML would read the name as \"foo\")",
         lambda w, i: _init(w, i, "foo #bar"), 2, "--name 'foo #bar' is not a run name"),
    Case("init_name_a_number", "`compress init --name 2024`: the recipe's name reads back as the text \"2024\"",
         lambda w, i: _init_named(w, i, "2024"), 0, "name: '2024'", ours=("new.yaml",)),
    # --- labels matched to the model's classes (F5)
    Case("labels_through_id2label", "a classifier named {0: b, 1: a} on texts labelled with its own answers "
         "(accuracy 1, not 0)", _own_answers, 0, "accuracy 1.0000", ours=("run", "model")),
    Case("labels_one_class_held_out", "every held-out label the same class (not \"the teacher scores at chance\")",
         _one_class_held_out, 0, "the held-out part has one class only", ours=("run",), short=False),
    Case("labels_beyond_the_model_classes", "integer labels 0, 1, 2 for a model with 2 classes",
         lambda w, i: _classified(w, i, [(t, str(n % 3)) for n, t in enumerate(TEXTS)]), 2,
         "label '2' is not a class of the model, which has 2 classes", ours=("run",)),
    Case("labels_more_classes_than_the_model", "3 named classes for a model with 2 unnamed ones",
         lambda w, i: _classified(w, i, [(t, ("pos", "neg", "meh")[n % 3]) for n, t in enumerate(TEXTS)]), 2,
         "3 classes in the labels ('meh', 'neg', 'pos') but the model has 2", ours=("run",)),
    # --- lengths beyond the teacher's positions (F13)
    Case("validate_seq_len_beyond_positions", "`compress validate` of a bench seq_len 1024 for a 512-position model",
         lambda w, i: ["validate", str(_with_seq_lens(w, i, "[16, 1024]"))], 2,
         "stages.2.seq_lens: 1024 tokens is more than the teacher's 512 positions"),
    Case("run_seq_len_beyond_positions", "`compress run --set stages.2.seq_lens=[600]` for a 512-position model "
         "(once a traceback in a report cell)",
         lambda w, i: ["run", str(_recipe(w, i)), "--out", str(w / "run"), "--set", "stages.2.seq_lens=[600]"], 2,
         "600 tokens is more than the teacher's 512 positions", ours=("run",)),
    # --- an ONNX model with a fixed batch axis (F10)
    Case("onnx_fixed_batch_two", "an ONNX teacher whose inputs are fixed at [2, 16] (once an onnxruntime "
         "InvalidArgument traceback in quantize's check)", _fixed_batch_onnx, 0,
         "the model's axes are fixed (batch 2, sequence 16)", ours=("run", "fixed")),
    # --- a teacher with NaN weights (F12)
    Case("teacher_nan_weights", "a teacher with a NaN weight (once parity passed and onnxruntime's quantizer "
         "asserted \"scale issue\" in 150 lines)", lambda w, i: _model_copy(w, i, _nan_weights), 1,
         "1 weight tensor of the model holds NaN or infinite values", ours=("run",)),
    # --- data files that are not UTF-8 text (F20)
    Case("validate_utf16_csv", "`compress validate` of a UTF-16 \"CSV\" (a spreadsheet's Unicode text export)",
         lambda w, i: _odd_data(w, i, UTF16), 2, "is UTF-16 text"),
    Case("validate_binary_csv", "`compress validate` of a binary file named .csv (6 KB without a newline)",
         lambda w, i: _odd_data(w, i, BINARY), 2, "holds binary data (NUL bytes), not UTF-8 text"),
]


# Found by issue 29 (an independent probe), fixed, and listed in docs/reliability.md.
FIXED = [
    "text-classification mapped data labels to class ids by sorted name, not by the model's id2label: a model with "
    "{0: pos, 1: neg} scored 1 - its accuracy, and with 12 integer classes \"10\" sorted before \"2\": labels are "
    "the model's class names through label2id, else numbers as numbers; a label the model cannot have (a number "
    "beyond its classes, more classes than its unnamed ones) stops the run at its first stage in one sentence",
    "`--set stages.2.batch_sizes=[0]` (or -1) passed --dry-run and validate, then an IndexError traceback in bench: "
    "batch sizes below 1, a batch size listed twice and negative thread counts are refused like seq_lens",
    "`compress init --name \"foo #bar\"` wrote the name unquoted and the recipe's name became \"foo\" (and --name "
    "2024 a number the recipe refused): init refuses a name that is not a run name, in one sentence, and writes "
    "every value as a YAML scalar that reads back as given",
    "bench seq_lens (or data.max_length) longer than the teacher's position embeddings passed validate and ended "
    "as a cut-off traceback inside the report's table cell: validate and run refuse them with file:line, naming "
    "the model's limit (max_position_embeddings, less RoBERTa-style padding offsets; prompt + new_tokens for LMs)",
    "a teacher with NaN weights passed export's parity check (NaN is never over the limit) and ended in a "
    "150-line AssertionError of onnxruntime's quantizer: export names the weight tensors that are not finite, and "
    "refuses outputs that are not finite, in one sentence",
    "an ONNX model with a fixed batch dimension of 2 ended in an onnxruntime InvalidArgument traceback in "
    "quantize's check (its quick speed-up fed one example): the check feeds as many as a fixed batch axis takes, "
    "and bench runs at the sizes the model accepts, saying so",
    "validate of a UTF-16 or binary \"CSV\" printed ~6 KB of raw bytes as its columns: one sentence naming the "
    "encoding (UTF-16, binary, not UTF-8 at byte N), and column lists in messages are capped and escaped",
    "one class only in the held-out part was reported as \"the teacher scores at chance, train it longer\": the "
    "report says the held-out part has one class and judges agreement with the fp32 teacher; finetune says so too",
]
