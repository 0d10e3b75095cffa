"""Task causal-lm: generate -> distill -> export with past key/values -> int4 -> generation bench, on a tiny Llama.

The real teacher (SmolLM2 from its GGUF file) runs in tests/test_recipes.py; here the model is built in-process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compress.errors import CompressError, SourceError
from compress.recipe import parse_recipe
from compress.runner import run


def lm_recipe(teacher: Path, data: Path, stages: str, name: str = "tiny-lm") -> object:
    return parse_recipe(f"""
version: 1
name: {name}
task: causal-lm
teacher: {{source: {teacher}}}
data: {{source: {data}, eval_size: 20, max_length: 48}}
stages:
{stages}
""")


GENERATE = ('  - {kind: generate, count: 40, eval_size: 8, max_new_tokens: 8, batch_size: 8, top_k: 4, '
            'prompt_template: "continue : {text}"}\n')
FULL = GENERATE + """\
  - {kind: distill, student: {from_teacher: {layers: auto, keep: 2}}, losses: {sequence: 1.0, token-kl: 1.0},
     max_steps: 6, batch_size: 8, eval_every: 3}
  - {kind: export, genai: true}
  - {kind: quantize, schemes: [int4-weight], int4: {block_size: 16}}
  - {kind: bench, seq_lens: [8, 12], new_tokens: 4, rounds: 2, min_iterations: 2, min_seconds: 0, warmup: 1,
     generation: {decoding: [greedy, sampled], new_tokens: [6], seed: 3}}
"""


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    from conftest import LM_WORDS

    folder = tmp_path_factory.mktemp("lm-run")
    words = LM_WORDS[2:]
    data = folder / "lm.txt"
    data.write_text("\n".join(" ".join(words[(i * 5 + j * 7) % len(words)] for j in range(4 + i % 6))
                              for i in range(160)) + "\n")
    from conftest import make_tiny_llama

    from compress.report import write_reports

    # heads of 16 dimensions: onnxruntime's GroupQueryAttention (export genai: true) takes no fewer
    teacher = make_tiny_llama(folder / "teacher", hidden=64)
    write_reports(folder / "run", run(lm_recipe(teacher, data, FULL), folder / "run"))
    return folder / "run"


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def test_causal_lm_generate_writes_dataset_with_provenance(lm_run):
    folder = lm_run / "artifacts" / "generated"
    rows = [json.loads(line) for line in (folder / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and sum(r["split"] == "eval" for r in rows) == 8
    assert all(r["prompt_text"].startswith("<|im_start|> user : continue : ") for r in rows)  # chat template
    assert all(r["tokens"] <= 8 and r["finish"] in ("eos", "length") for r in rows)
    assert sum(bool(r["completion"]) for r in rows) > 20
    provenance = json.loads((folder / "provenance.json").read_text())
    assert provenance["teacher"]["license"] == "apache-2.0" and provenance["teacher"]["sha256"]
    # top_k: one distribution per generated token, the end token's included, and the ids to train on
    assert all(len(r["completion_ids"]) == r["tokens"] + (r["finish"] == "eos") for r in rows)
    assert provenance["topk"]["k"] == 4 and provenance["topk"]["positions"] == sum(len(r["completion_ids"]) for r in rows)
    assert 0 < provenance["topk"]["mean_mass"] <= 1.0001
    assert provenance["settings"]["max_new_tokens"] == 8 and provenance["completions"] == 40


def test_causal_lm_distill_builds_half_depth_student_and_scores_it(lm_run):
    metrics = manifest(lm_run)["stages"]["distill"]["metrics"]
    assert (metrics["teacher_layers"], metrics["student_layers"]) == (4, 2)
    assert metrics["data"] == "generated:generated" and metrics["eval_sequences"] == 8
    assert metrics["kl_targets"] == "cached top-k" and len(metrics["layer_choice"]["importance_kl"]) == 4
    assert metrics["layer_choice"]["layers"] == [0, 3]  # keep 2: the first and the last
    for key in ("quality_before", "quality_after", "teacher_quality"):
        assert set(metrics[key]) >= {"perplexity", "agreement"}
    config = json.loads((lm_run / "artifacts" / "student" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert (lm_run / "artifacts" / "student" / "tokenizer_config.json").is_file()


def test_causal_lm_export_has_cache_inputs_and_matches_torch(lm_run):
    metrics = manifest(lm_run)["stages"]["export"]["metrics"]
    for name in ("teacher.onnx", "student.onnx"):
        assert metrics[name]["parity_max_abs"] < 1e-3 and metrics[name]["parity_decode_max_abs"] < 1e-3
        info = json.loads((lm_run / "artifacts" / name / "compress.json").read_text())
        assert info["task"] == "causal-lm" and "past_key_values.0.key" in info["inputs"]
        assert "present.0.key" in [o["name"] for o in info["outputs"]]  # each with its dtype and shape
        assert (lm_run / "artifacts" / name / "onnx" / "model.onnx").is_file()  # where ORTModelForCausalLM looks
    assert metrics["student.onnx"]["past_inputs"] == 4  # 2 layers x key, value


def test_causal_lm_int4_quantizes_the_tied_output_projection(lm_run):
    import onnx

    model = onnx.load(str(lm_run / "artifacts" / "teacher.int4-weight.onnx" / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    # 4 layers x 7 projections + the output projection, whose weight was Transpose(embeddings) before folding
    assert ops.count("MatMulNBits") == 4 * 7 + 1
    assert ops.count("GatherBlockQuantized") == 1  # the embedding table: 8 bits, as the output projection
    initializers = {i.name for i in model.graph.initializer}
    assert not [n for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in initializers]


@pytest.mark.parametrize("algorithm", ["rtn", "q4_1", "k-quant", "hqq", "gptq"])
def test_causal_lm_int4_algorithm_quantizes_and_keeps_the_vocabulary_in_8_bits(lm_run, tmp_path, algorithm):
    import onnx
    import onnxruntime as ort

    from compress.stages import quantize_int4
    from compress.tasks.causal_lm import next_token_stats

    source = lm_run / "artifacts" / "teacher.onnx"
    opts = quantize_int4.resolved(quantize_int4.Int4Options(algorithm=algorithm, block_size=16, calibration_size=2),
                                  "causal-lm")
    ids = np.asarray([[1, 5, 9, 12, 7, 20]], dtype=np.int64)
    feeds = [{"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(6)[None]}]
    for value in onnx.load(str(source / "model.onnx")).graph.input:
        if value.name.startswith("past_key_values"):
            dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
            feeds[0][value.name] = np.zeros((1, dims[1], 0, dims[3]), np.float32)
    options: dict = {}

    quantize_int4.int4(opts, source / "model.onnx", tmp_path / "model.onnx", options, calibration=lambda: feeds)

    model = onnx.load(str(tmp_path / "model.onnx"))
    bits = {n.op_type + str(next(a.i for a in n.attribute if a.name == "bits")) for n in model.graph.node
            if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
    assert bits == {"MatMulNBits4", "MatMulNBits8", "GatherBlockQuantized8"}
    assert options["settings"].startswith(f"{algorithm}, block 16, ") and "vocabulary 8-bit" in options["settings"]
    logits = ort.InferenceSession(str(tmp_path / "model.onnx")).run(["logits"], feeds[0])[0]
    reference = ort.InferenceSession(str(source / "model.onnx")).run(["logits"], feeds[0])[0]
    import torch

    argmax, _ = next_token_stats(torch.from_numpy(logits), torch.from_numpy(ids))
    expected, _ = next_token_stats(torch.from_numpy(reference), torch.from_numpy(ids))
    assert np.isfinite(logits).all() and (argmax == expected).float().mean() >= 0.5


def test_causal_lm_bench_reports_generation_speed_and_quality(lm_run):
    report = json.loads((lm_run / "report.json").read_text())
    rows = {r["variant"]: r for r in report["rows"]}
    assert set(rows) == {f"{m}{f}{s}.onnx" for m in ("teacher", "student") for f in ("", ".genai")
                         for s in ("", ".int4-weight")}
    for name, row in rows.items():
        assert row["runtime"] == ("onnxruntime-genai" if ".genai" in name else "onnxruntime")
        assert row["status"] == "ok" and row["tokens_per_s"] > 0 and row["ttft_ms"] > 0 and row["size_mb"] > 0
        assert set(row["quality"]) >= {"perplexity", "agreement", "human_perplexity", "human_agreement"}
        assert row["quality"]["human_perplexity"] > 1 and row["quality"]["human_perplexity"] != row["quality"]["perplexity"]
    assert rows["teacher.onnx"]["quality"]["agreement"] == 1.0 and rows["teacher.onnx"]["is_baseline"]
    assert rows["teacher.onnx"]["quality"]["human_agreement"] == 1.0 and "settings" not in rows["teacher.onnx"]
    settings = "q4_1, block 16, asymmetric, int8 compute, vocabulary 8-bit"
    assert rows["teacher.int4-weight.onnx"]["settings"] == rows["teacher.genai.int4-weight.onnx"]["settings"] == settings
    # genai's graph computes what optimum's does: same quality, to float rounding
    for plain, genai in (("teacher.onnx", "teacher.genai.onnx"),
                         ("student.int4-weight.onnx", "student.genai.int4-weight.onnx")):
        for key in ("perplexity", "human_perplexity"):
            assert rows[genai]["quality"][key] == pytest.approx(rows[plain]["quality"][key], rel=0.02), (genai, key)
    markdown = (lm_run / "report.md").read_text()
    assert "| TTFT ms | tokens/s |" in markdown and "perplexity" in markdown and "human_perplexity" in markdown
    assert f"teacher.int4-weight.onnx was quantized with: {settings}" in markdown
    assert "milliseconds per generated token" in markdown


def test_causal_lm_harness_decodes_through_the_cache_like_a_full_forward(lm_run):
    import onnxruntime as ort

    from compress.targets.harness import LMSession

    lm = LMSession(ort.InferenceSession(str(lm_run / "artifacts" / "student.onnx" / "model.onnx")))
    ids = np.asarray([[1, 5, 9, 12, 7, 20, 8]], dtype=np.int64)
    full, _ = lm.prefill(ids)
    _, first_tokens_done = lm.prefill(ids[:, :4])
    past, logits = first_tokens_done, None
    for t in range(4, ids.shape[1]):
        logits, past = lm.step(ids[:, t:t + 1], past, t)
        np.testing.assert_allclose(logits[0, -1], full[0, t], atol=1e-4)
    _, _, tokens = lm.generate(ids, 5)
    assert len(tokens) == 5


def test_causal_lm_genai_bundle_generates_in_onnxruntime_genai_as_in_onnxruntime(lm_run):
    import onnxruntime as ort
    import onnxruntime_genai as og

    from compress.targets.harness import GenaiLM, LMSession

    folder = lm_run / "artifacts" / "teacher.genai.onnx"
    ids = np.asarray([[1, 5, 9, 12, 7, 20, 8]], dtype=np.int64)
    plain = LMSession(ort.InferenceSession(str(folder / "onnx" / "model.onnx"))).generate(ids, 6)[2]
    assert GenaiLM(str(folder), "CPUExecutionProvider", 1).generate(ids, 6)[2] == plain
    model = og.Model(str(folder))  # as an app opens it: the folder, nothing else
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=10)
    generator = og.Generator(model, params)
    generator.append_tokens(ids.astype(np.int32))
    generator.generate_next_token()
    assert int(generator.get_next_tokens()[0]) == plain[0]


def test_causal_lm_export_genai_refuses_heads_genai_cannot_run_in_one_line(tmp_path, tiny_llama, lm_texts):
    stages = GENERATE + "  - {kind: distill, student: {from_teacher: {layers: [0]}}, max_steps: 1}\n" \
        "  - {kind: export, genai: true}\n"
    with pytest.raises(CompressError, match="heads of 8 dimensions.*multiple of 16"):
        run(lm_recipe(tiny_llama, lm_texts, stages), tmp_path / "run")
    assert not list((tmp_path / "run" / "artifacts").glob("*genai*"))


def test_causal_lm_bench_times_every_prompt_decoding_and_new_token_cell(lm_run):
    results = json.loads((lm_run / "artifacts" / "bench" / "results.json").read_text())
    for variant in ("teacher.onnx", "student.int4-weight.onnx"):
        rows = {r["seq_len"]: r for r in results["rows"] if r["variant"] == variant}
        assert set(rows) == {8, 12}
        for row in rows.values():
            cells = {(m["decoding"], m["new_tokens"]): m for m in row["generation"]}
            assert set(cells) == {("greedy", 4), ("greedy", 6), ("sampled", 4), ("sampled", 6)}
            assert all(m["ttft_ms"] > 0 and m["tokens_per_s"] > 0 and len(m["rounds_p50"]) == 2 for m in cells.values())
            assert row["decoding"] == "greedy" and row["peak_rss_mb"] > 0
            assert cells[("greedy", 4)]["ms_per_token"] == pytest.approx(row["latency_ms"]["p50"])


def test_causal_lm_sampled_generation_repeats_under_a_seed(lm_run):
    import onnxruntime as ort

    from compress.targets.harness import LMSession, Sampler

    lm = LMSession(ort.InferenceSession(str(lm_run / "artifacts" / "student.onnx" / "model.onnx")))
    ids = np.asarray([[1, 5, 9, 12, 7, 20, 8]], dtype=np.int64)

    def sample(seed):
        sampler = Sampler(temperature=1.5, top_k=50, top_p=1.0, seed=seed)
        return lm.generate(ids, 12, sampler)[2]

    assert sample(3) == sample(3)
    assert len({tuple(sample(seed)) for seed in range(4)}) > 1  # it does sample


@pytest.mark.parametrize("settings, allowed", [
    ({"top_k": 1}, {3}),                      # top-k 1 is greedy
    ({"top_p": 0.01}, {3}),                   # the first token alone reaches top_p
    ({"top_k": 2, "top_p": 1.0}, {3, 1}),     # the two most likely, both drawn
    ({"top_k": 40, "top_p": 0.85}, {3, 1}),   # 0.85 is reached by the top two (0.5 + 0.4)
    ({"top_k": 5, "top_p": 1.0}, {0, 1, 2, 3, 4}),  # everything, though the float sum may stay under 1.0
])
def test_sampler_draws_only_what_top_k_and_top_p_keep(settings, allowed):
    from compress.targets.harness import Sampler

    logits = np.log(np.asarray([[0.04, 0.4, 0.05, 0.5, 0.01]], dtype=np.float32))
    sampler = Sampler(**{"temperature": 1.0, "seed": 0, **settings})
    drawn = {int(sampler(logits)[0, 0]) for _ in range(2000)}
    assert drawn == allowed


def test_sampler_draws_from_any_logits_at_top_p_1():
    from compress.targets.harness import Sampler

    logits = np.random.default_rng(0).normal(size=(256, 50)).astype(np.float32) * 3
    drawn = Sampler(temperature=1.0, top_k=50, top_p=1.0, seed=0)(logits)  # float sums may stay under 1.0
    assert drawn.shape == (256, 1) and drawn.min() >= 0 and drawn.max() < 50


def test_generate_resumes_after_an_interruption_with_the_same_text(tmp_path, tiny_llama, lm_texts, monkeypatch):
    from compress.stages import generate

    recipe = lm_recipe(tiny_llama, lm_texts, GENERATE)
    run(recipe, tmp_path / "whole")
    whole = (tmp_path / "whole" / "artifacts" / "generated" / "data.jsonl").read_text()

    real, calls = generate._generate, []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "_generate", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        run(recipe, tmp_path / "cut")
    assert not (tmp_path / "cut" / "artifacts" / "generated").exists()  # no half-written artifact
    monkeypatch.setattr(generate, "_generate", real)
    run(recipe, tmp_path / "cut")
    assert (tmp_path / "cut" / "artifacts" / "generated" / "data.jsonl").read_text() == whole
    assert manifest(tmp_path / "cut")["stages"]["generate"]["status"] == "done"


@pytest.mark.parametrize("task, stages, error", [
    ("sentence-embedding", "  - {kind: distill, student: {from_teacher: {layers: [0]}}, loss: sequence}\n",
     "does not apply to task sentence-embedding"),
    ("causal-lm", "  - {kind: distill, student: {from_teacher: {layers: [0]}}, loss: cosine}\n",
     "does not apply to task causal-lm"),
    ("sentence-embedding", GENERATE, "generate needs task causal-lm"),
])
def test_causal_lm_losses_and_stages_fit_their_task(tmp_path, tiny_llama, tiny_bert, lm_texts, task, stages, error):
    teacher = tiny_llama if task == "causal-lm" else tiny_bert
    recipe = parse_recipe(f"""
version: 1
name: wrong
task: {task}
teacher: {{source: {teacher}}}
data: {{source: {lm_texts}, eval_size: 20}}
stages:
{stages}""")
    with pytest.raises(CompressError, match=error):
        run(recipe, tmp_path / "run")


def test_convert_gguf_refuses_an_unreadable_file_in_one_line(tmp_path):
    from compress.tasks.causal_lm import convert_gguf

    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(SourceError) as caught:
        convert_gguf(bad, tmp_path / "out")
    assert "model.gguf" in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bundle", ["student.onnx", "student.genai.onnx"])
def test_generate_example_decodes_like_torch_greedy_generation(lm_run, bundle):
    import subprocess
    import sys

    import torch

    from compress.tasks.causal_lm import load_backbone, load_tokenizer

    root = Path(__file__).resolve().parent.parent
    prompt = "the movie was good and the cast"
    proc = subprocess.run([sys.executable, str(root / "export" / "generate.py"), str(lm_run / "artifacts" / bundle),
                           prompt, "--max-new-tokens", "6"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tokens = json.loads(proc.stdout)["tokens"]
    folder = lm_run / "artifacts" / "student"
    model, tokenizer = load_backbone(folder).eval(), load_tokenizer(folder)
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             eos_token_id=model.config.eos_token_id, pad_token_id=model.config.eos_token_id)
    expected = [t for t in out[0, ids.shape[1]:].tolist()]
    expected = expected[: expected.index(model.config.eos_token_id)] if model.config.eos_token_id in expected else expected
    assert tokens == expected


def _bpe_tokenizer(path: Path, byte_level: bool, byte_fallback: bool) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else list("abcdefghijklmnopqrstuvwxyz ")
    vocab = {c: i for i, c in enumerate(sorted(alphabet))}
    vocab.update({"Ġt": len(vocab), "he": len(vocab) + 1} if byte_level else {})
    merges = [("Ġ", "t"), ("h", "e")] if byte_level else []
    tok = Tokenizer(models.BPE(vocab, merges, byte_fallback=byte_fallback))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if byte_level else pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()]) if byte_fallback else decoders.ByteLevel()
    tok.save(str(path))
    return path


@pytest.mark.parametrize("byte_level, byte_fallback, changed", [
    (True, True, True),     # transformers' form of a GGUF byte-level BPE: genai misreads it
    (True, False, False),   # already plain byte-level
    (False, True, False),   # SentencePiece-style: byte_fallback is real there
])
def test_byte_level_decoding_rewrites_only_byte_level_bpe_with_fallback(tmp_path, byte_level, byte_fallback, changed):
    from tokenizers import Tokenizer

    from compress.tasks.causal_lm import byte_level_decoding

    path = _bpe_tokenizer(tmp_path / "tokenizer.json", byte_level, byte_fallback)
    text = "the heat, then café"
    before = Tokenizer.from_file(str(path)).encode(text).ids
    original = path.read_text()
    assert byte_level_decoding(path) is changed
    after = Tokenizer.from_file(str(path))
    assert after.encode(text).ids == before  # the ids a model sees never change
    if changed:
        assert after.decode(before) == text and '"byte_fallback": false' in path.read_text()
    else:
        assert path.read_text() == original


def test_model_stats_scores_only_the_scored_positions_as_the_full_logits_would(tiny_llama):
    import numpy as np
    import torch

    from compress.stages import lm_text
    from compress.tasks.causal_lm import load_backbone, load_tokenizer, next_token_stats

    model, tokenizer = load_backbone(tiny_llama).eval(), load_tokenizer(tiny_llama)
    pairs = [("the movie was", "good and moving"), ("a film", "boring but fine story"), ("it", "is not")]
    tok = lm_text.tokenize(tokenizer, pairs, 64, "test")
    argmax, nll = lm_text.model_stats(model, tok, tokenizer.pad_token_id, batch_size=2)
    mask = lm_text.scored_mask(tok)
    full_argmax, full_nll = [], []
    with torch.inference_mode():  # the reference: every position's logits, one sequence at a time
        for ids in tok.ids:
            a, n = next_token_stats(model(input_ids=torch.tensor([ids])).logits, torch.tensor([ids]))
            full_argmax.append(np.concatenate([[0], a[0, :-1].numpy()]))
            full_nll.append(np.concatenate([[0.0], n[0, :-1].numpy()]))
    assert mask.sum() == sum(len(c.split()) for _, c in pairs)
    np.testing.assert_array_equal(argmax[mask], np.concatenate(full_argmax)[mask])
    np.testing.assert_allclose(nll[mask], np.concatenate(full_nll)[mask], rtol=1e-4, atol=1e-5)
    assert (nll[~mask] == 0).all()


def test_gguf_fields_reads_the_scalars_asked_for_and_none_for_the_rest(tmp_path):
    import gguf

    from compress.tasks.causal_lm import gguf_fields

    path = tmp_path / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("general.license", "apache-2.0")
    writer.add_uint32("llama.block_count", 7)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert gguf_fields(path, "tokenizer.ggml.add_bos_token", "general.license", "llama.block_count", "absent") == {
        "tokenizer.ggml.add_bos_token": False, "general.license": "apache-2.0", "llama.block_count": 7, "absent": None}
    assert gguf_fields(tmp_path / "missing.gguf", "general.license") == {"general.license": None}


@pytest.mark.parametrize("returncode, stdout, stderr, expected", [
    (0, "genai says hello\n[[1, 2], [3]]\n", "", [[1, 2], [3]]),
    (3, "", "Cannot know how to parse line:\n", "Cannot know how to parse line:"),
    (-11, "", "Fatal Python error: Segmentation fault\n", "onnxruntime-genai's tokenizer crashed reading it (SIGSEGV)"),
])
def test_genai_ids_turns_the_childs_exit_into_ids_or_one_line(monkeypatch, tmp_path, returncode, stdout, stderr,
                                                              expected):
    import subprocess

    from compress.stages import lm_genai

    def child(command, **kwargs):
        assert json.loads(kwargs["input"]) == ["a b", "c"]  # the texts travel on stdin
        return subprocess.CompletedProcess(command, returncode, stdout, stderr)

    monkeypatch.setattr(lm_genai.subprocess, "run", child)
    assert lm_genai._genai_ids(tmp_path, ["a b", "c"]) == expected


def test_genai_ids_reports_a_bundle_genai_cannot_open_in_one_line(tmp_path):
    from compress.stages import lm_genai

    # the real child: onnxruntime-genai's error for a folder without genai_config.json comes back as text
    said = lm_genai._genai_ids(tmp_path / "missing", ["a"])
    assert isinstance(said, str) and "genai_config.json" in said
