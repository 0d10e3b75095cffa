"""The GitHub Action's plan step (action.yml: `python -m compress.action plan`).

From the action's inputs (INPUT_RECIPE, INPUT_SET, INPUT_PROVIDERS, INPUT_RUN_DIR) it works out the
`--set` overrides, the run directory and the cache key of the run, and writes them to $GITHUB_OUTPUT.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys

from compress.compare import GateUsageError
from compress.errors import CompressError
from compress.gate import write_github_output


def split_overrides(text: str) -> list[str]:
    """The action's `set` input: one override per line, or on one line separated by spaces (shell quoting)."""
    text = (text or "").strip()
    if "\n" in text:
        return [line.strip() for line in text.splitlines() if line.strip()]
    return shlex.split(text)


def plan(recipe_file: str, set_text: str = "", providers: str = "", run_dir: str = "") -> dict:
    """Overrides, run directory and cache key of the action's run, from its inputs."""
    import hashlib

    from compress import __version__
    from compress.artifacts import sha256_path
    from compress.recipe import load_recipe
    from compress.sources import resolve_local

    overrides = split_overrides(set_text)
    names = [p for p in providers.replace(",", " ").split() if p]
    recipe = load_recipe(recipe_file, overrides)
    if names:
        benches = [i for i, stage in enumerate(recipe.stages) if stage.kind == "bench"]
        if not benches:
            raise GateUsageError(f"providers {providers!r}: the recipe {recipe_file} has no bench stage")
        overrides += [f"stages.{i}.providers=[{', '.join(names)}]" for i in benches]
        recipe = load_recipe(recipe_file, overrides)
    # The run cache must change with anything that changes the outputs: a hit restores finished stages.
    digest = hashlib.sha256(recipe.canonical_json().encode() + __version__.encode())
    for source, revision in ((recipe.teacher.source, recipe.teacher.revision), (recipe.data.source, None)):
        local = resolve_local(source)  # a hub id: its name and revision stand for its content
        digest.update((sha256_path(local) if local else f"{source}@{revision}").encode())
    prefix = f"compress-run-{platform.system()}-{recipe.name}-"
    return {"overrides": overrides, "run-dir": run_dir or f"runs/{recipe.name}",
            "cache-key": prefix + digest.hexdigest()[:24], "cache-prefix": prefix}


def main(argv: list[str]) -> int:
    """`python -m compress.action plan`: the action's plan step, reading INPUT_* and writing $GITHUB_OUTPUT."""
    if argv != ["plan"]:
        print("usage: python -m compress.action plan  (reads INPUT_RECIPE, INPUT_SET, INPUT_PROVIDERS, "
              "INPUT_RUN_DIR; writes $GITHUB_OUTPUT)", file=sys.stderr)
        return 2
    env = os.environ
    try:
        result = plan(env.get("INPUT_RECIPE", ""), env.get("INPUT_SET", ""), env.get("INPUT_PROVIDERS", ""),
                      env.get("INPUT_RUN_DIR", ""))
    except CompressError as exc:
        print(f"::error::{str(exc).splitlines()[0]}\nerror: {exc}", file=sys.stderr)
        return exc.exit_code
    outputs = dict(result, overrides="\n".join(result["overrides"]))
    if env.get("GITHUB_OUTPUT"):
        write_github_output(env["GITHUB_OUTPUT"], outputs)
    print(json.dumps(outputs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
