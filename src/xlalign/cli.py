"""The ``xlalign`` command line: each subcommand parses flags and calls one library function."""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from xlalign.errors import XlalignError
from xlalign.studies.layers import DEFAULT_METRICS as DEFAULT_SWEEP_METRICS

app = typer.Typer(
    name="xlalign",
    help="Measure how a transformer's hidden states line up across languages, layer by layer.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Measure how a transformer's hidden states line up across languages, layer by layer."""


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command("problems")
def problems_cmd(
    n: Annotated[
        int | None,
        typer.Option("--n", help="Number of problems (n // 5 per category; default 200)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of random.Random, as in the study.")] = 42,
    output: Annotated[
        Path, typer.Option("-o", "--output", help="JSONL file to write (id, category, zh, en).")
    ] = Path("problems.jsonl"),
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="arithmetic (the study's problems); for xlalign lens (zh/en with "
            "answer_zh/answer_en; need --model and xlalign[hsk]): translate-words (HSK word "
            "translation: the source word is in the prompt), cloze-words (a sentence with the "
            "word blanked, one language per prompt: the other language's word is latent) or "
            "copy-words (repeat a word: the source-copy control).",
        ),
    ] = "arithmetic",
    model: Annotated[
        str | None,
        typer.Option("--model", help="Word tasks: the model whose tokenizer decides."),
    ] = None,
) -> None:
    """Write a built-in parallel zh/en corpus as JSONL (the study's problems by default)."""
    from xlalign.data.corpora import WORD_TASKS

    if task in WORD_TASKS:
        from xlalign.data import corpora
        from xlalign.models.loading import load_tokenizer

        if model is None:
            raise XlalignError(
                f"--task {task} needs --model: only words whose answers are single tokens of "
                "that model's tokenizer are kept"
            )
        build = getattr(corpora, task.replace("-", "_"))
        words = build(load_tokenizer(model), n, seed=seed)
        words.to_jsonl(output)
        print(f"wrote {len(words)} {task} rows (zh, en) to {output}: {words.source}")
        return
    if task != "arithmetic":
        raise XlalignError(
            f"--task must be arithmetic or one of {', '.join(WORD_TASKS)}, got '{task}'"
        )
    if model is not None:
        raise XlalignError(f"--model goes with a word task ({', '.join(WORD_TASKS)})")
    from xlalign.data.problems import generate_problems

    n = 200 if n is None else n
    if n < 5:
        raise XlalignError(f"--n must be at least 5 (one problem per category), got {n}")
    corpus = generate_problems(n, seed)
    corpus.to_jsonl(output)
    why = ""
    if len(corpus) != n:
        why = (
            f" (--n {n} asked; the study makes n // 5 = {n // 5} per category x 5 categories; "
            "give a multiple of 5 to get exactly n)"
        )
    print(f"wrote {len(corpus)} problems ({', '.join(corpus.languages)}) to {output}{why}")


@app.command("extract")
def extract_cmd(
    model: Annotated[
        str, typer.Option("--model", help="Hub id, local folder, .gguf file or named model.")
    ],
    data: Annotated[
        Path,
        typer.Option("--data", help="Parallel corpus: JSONL, CSV, TSV, <lang>.txt folder, or hsk."),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder to write.")],
    langs: Annotated[
        str | None, typer.Option("--langs", help="Languages, comma-separated (default: all).")
    ] = None,
    sites: Annotated[
        str, typer.Option("--sites", help="embed, L<i>, L<i>-L<j>, final or all, comma-separated.")
    ] = "all",
    pool: Annotated[
        str,
        typer.Option(
            "--pool", "--pools", help="last, mean, first, weighted, eos, tokens, comma-separated."
        ),
    ] = "last,mean",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward.")] = 32,
    dtype: Annotated[
        str | None,
        typer.Option("--dtype", help="float32, bfloat16 or float16 (default: fp32 CPU, bf16 GPU)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")] = "auto",
    device_map: Annotated[
        str | None, typer.Option("--device-map", help="Accelerate device map, e.g. auto.")
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory", help="With --device-map: per device, e.g. 0=70GiB,cpu=200GiB."
        ),
    ] = None,
    offload_folder: Annotated[
        Path | None,
        typer.Option(
            "--offload-folder", help="With --device-map: where weights that fit nowhere go."
        ),
    ] = None,
    shard_by: Annotated[
        str,
        typer.Option("--shard-by", help="torchrun/accelerate launch: deal out batch or language."),
    ] = "batch",
    revision: Annotated[str | None, typer.Option("--revision", help="Hub revision.")] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Run the model repo's own code.")
    ] = False,
    padding_side: Annotated[
        str, typer.Option("--padding-side", help="left or right (results are the same).")
    ] = "right",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an incomplete run.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run in the output folder.")
    ] = False,
    control: Annotated[
        str | None,
        typer.Option(
            "--control",
            help="random-init: also extract a random-weights control (same architecture, fresh "
            "weights) into OUT/control-random-init, as run does.",
        ),
    ] = None,
    control_seed: Annotated[
        int | None, typer.Option("--control-seed", help="Seed of the random-init control (0).")
    ] = None,
    random_init_seed: Annotated[
        int | None,
        typer.Option(
            "--random-init-seed",
            help="Extract random weights of the model's architecture (this seed) instead of "
            "the trained weights; every output says so.",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
    ] = True,
    compat: Annotated[
        str,
        typer.Option(
            "--compat",
            help="exact, or mexa: the weighted pool counts positions in the padded batch as "
            "MEXA's code does (differs from exact only with --padding-side left).",
        ),
    ] = "exact",
) -> None:
    """Capture hidden states of every prompt at the chosen sites into a run folder."""

    from xlalign.capture.distributed import launch_env, parse_max_memory
    from xlalign.capture.engine import extract
    from xlalign.models.loading import ModelOptions
    from xlalign.pipeline.config import study_corpus
    from xlalign.store.run import weights_label
    from xlalign.store.sites import describe_sites

    if control not in (None, "random-init"):
        raise XlalignError(f"--control must be random-init, got '{control}'")
    if control_seed is not None and control is None:
        raise XlalignError("--control-seed needs --control random-init")
    if control is not None and launch_env().distributed:
        raise XlalignError(
            "--control random-init in a torchrun launch: extract the control in its own launch "
            "with --random-init-seed SEED -o OUT/control-random-init"
        )
    if control is not None and random_init_seed is not None:
        raise XlalignError(
            "--control random-init adds a control beside the trained model's run; "
            "--random-init-seed extracts random weights instead: choose one"
        )
    options = ModelOptions(
        dtype=dtype, device=device, device_map=device_map,
        max_memory=parse_max_memory(max_memory), offload_folder=offload_folder,
        revision=revision, trust_remote_code=trust_remote_code,
        random_init_seed=random_init_seed,
    )  # fmt: skip
    corpus = study_corpus(str(data), None, 0, _csv_list(langs) if langs else None)
    run = extract(
        model, corpus, langs, sites=sites, pools=pool, batch_size=batch_size, output=output,
        resume=resume, overwrite=overwrite, padding_side=padding_side, options=options,
        progress=progress, shard_by=shard_by, compat=compat,
    )  # fmt: skip
    if not launch_env().is_main:
        return  # one summary line per launch, from rank 0
    runs = [run]
    if control == "random-init":  # as in run: the control beside the trained model's run
        from xlalign.pipeline.reuse import ensure_control

        ctl, state = ensure_control(
            run, corpus, 0 if control_seed is None else control_seed, options=options,
            batch_size=batch_size, progress=progress, pools=tuple(run.pools),
        )  # fmt: skip
        runs.append(ctl)
        if state != "captured":
            print(f"the control in {ctl.path}: {state}")
    for r in runs:
        t = r.manifest.get("timings", {})
        print(
            f"wrote {r.path}{weights_label(r.manifest)}: {len(r.languages)} languages x "
            f"{r.n_rows} prompts, sites {describe_sites(r.sites)}, pools {', '.join(r.pools)} "
            f"({t.get('capture_s', 0):.1f} s capture, {t.get('prompts_per_s') or 0:.0f} "
            "prompts/s)"
        )


@app.command("export-npz")
def export_npz_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by xlalign extract.")],
    output: Annotated[Path, typer.Option("-o", "--output", help=".npz file to write.")],
    pool: Annotated[str, typer.Option("--pool", help="Which pooled vectors to export.")] = "last",
    sites: Annotated[
        str | None, typer.Option("--sites", help="Sites to export (default: all in the run).")
    ] = None,
    langs: Annotated[
        str | None, typer.Option("--langs", help="Languages to export (default: all).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing .npz file.")
    ] = False,
) -> None:
    """Write one pool as an .npz with keys <lang>_<site> (zh_L0, en_embed...), no pickles."""
    from xlalign.store.run import export_npz, load_run
    from xlalign.store.sites import parse_sites

    loaded = load_run(run)
    chosen = None
    if sites is not None:  # a site the run did not capture fails in export_npz, naming those it has
        chosen = parse_sites(sites, loaded.n_layers, "final" in loaded.sites, where="run")
    path = export_npz(
        loaded,
        output,
        pool=pool,
        sites=chosen,
        langs=_csv_list(langs) if langs else None,
        overwrite=overwrite,
    )
    print(f"wrote {path}: pool {pool}, {len(loaded.languages)} languages")


NULL_PERMS_HELP = (
    "Scrambled pairings for every similarity's permutation null (p_value, null_q95, "
    "p_best_site), shared by all sites; 0: none."
)
NULL_HELP = "exact (closed form over all permutations) or monte-carlo (the study's 1000 draws)."
BACKEND_HELP = (
    "Array library of the metrics: numpy, torch (CUDA when present, else CPU), or auto "
    "(torch where CUDA is present, else numpy)."
)


@app.command("align")
def align_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder written by xlalign extract.")],
    metrics: Annotated[
        str,
        typer.Option(
            "--metrics",
            help="z, p1, mexa, mrr, xsim, cka, cka_unbiased, knn, cknna, svcca, hub, cohen, "
            "cycle_knn, lcs_knn, edit_distance_knn.",
        ),
    ] = ",".join(DEFAULT_SWEEP_METRICS),
    null: Annotated[str, typer.Option("--null", help=NULL_HELP)] = "exact",
    n_perms: Annotated[int, typer.Option("--n-perms", help="Monte Carlo permutations.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the null and the bootstrap.")] = 42,
    stratify: Annotated[
        str | None, typer.Option("--stratify", help="Permute only within this metadata column.")
    ] = None,
    center: Annotated[
        bool, typer.Option("--center", help="Remove each language's mean vector first.")
    ] = False,
    standardize: Annotated[
        bool,
        typer.Option("--standardize", help="z-score each dimension over both languages first."),
    ] = False,
    pivot: Annotated[
        str | None, typer.Option("--pivot", help="Compare each language with this one only.")
    ] = None,
    n_boot: Annotated[
        int, typer.Option("--n-boot", help="Confidence intervals (jackknife, Wilson); 0: none.")
    ] = 200,
    null_perms: Annotated[int, typer.Option("--null-perms", help=NULL_PERMS_HELP)] = 1000,
    backend: Annotated[str, typer.Option("--backend", help=BACKEND_HELP)] = "auto",
    sites: Annotated[str | None, typer.Option("--sites", help="Sites (default: all).")] = None,
    pools: Annotated[
        str | None, typer.Option("--pools", "--pool", help="Pools (default: all).")
    ] = None,
    langs: Annotated[str | None, typer.Option("--langs", help="Languages (default: all).")] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Folder for alignment.* (default: RUN).")
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
    compat: Annotated[
        str,
        typer.Option(
            "--compat",
            help="exact, or platonic: platonic-rep's joint outlier clamp over all sites, "
            "normalisation and 1e-6 epsilons for cka, knn, cknna, svcca and the k-NN metrics.",
        ),
    ] = "exact",
) -> None:
    """Sweep alignment metrics over every site, pool and language pair of a run."""
    from xlalign.pipeline.stages import run_align
    from xlalign.studies.layers import SweepConfig, format_table

    cfg = SweepConfig(
        metrics=tuple(_csv_list(metrics)), null=null, n_perms=n_perms, seed=seed,
        stratify=stratify, center=center, pivot=pivot, n_boot=n_boot, standardize=standardize,
        backend=backend, null_perms=null_perms,
        sites=tuple(_csv_list(sites)) if sites else None,
        pools=tuple(_csv_list(pools)) if pools else None,
        langs=tuple(_csv_list(langs)) if langs else None, compat=compat,
    )  # fmt: skip
    result, lines, paths = run_align(run, cfg, output, progress=progress)
    print(format_table(result))
    print("\n".join(lines))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")


@app.command("origin")
def origin_cmd(
    run: Annotated[
        Path | None, typer.Argument(help="Run folder (embed and L0 sites, last and mean pools).")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Extract first from this model (one step).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Corpus for --model (with RUN: only if it kept none)."),
    ] = None,
    langs: Annotated[
        str | None, typer.Option("--langs", help="Two languages (default: the run's first two).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Run folder when extracting (--model).")
    ] = None,
    sites: Annotated[str, typer.Option("--sites", help="Sites when extracting.")] = "all",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward.")] = 32,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.")
    ] = None,
    null: Annotated[str, typer.Option("--null", help=NULL_HELP)] = "exact",
    n_perms: Annotated[int, typer.Option("--n-perms", help="Monte Carlo draws.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the null.")] = 42,
    stratify: Annotated[
        str, typer.Option("--stratify", help="Metadata column of the category analyses.")
    ] = "category",
    control: Annotated[
        str | None, typer.Option("--control", help="random-init: add a random-weights control.")
    ] = None,
    control_seed: Annotated[
        int, typer.Option("--control-seed", help="Seed of the random weights.")
    ] = 0,
    cached_npz: Annotated[
        Path | None,
        typer.Option("--cached-npz", help="all_layers_lasttok.npz to report as z_l0_cached."),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """Where the first layers' alignment comes from: tokens, templates, or learning."""
    from xlalign.pipeline.stages import run_origin
    from xlalign.studies.origin import OriginConfig

    if control not in (None, "random-init"):
        raise XlalignError(f"--control must be random-init, got '{control}'")
    if (run is None) == (model is None):
        raise XlalignError("give either a RUN folder or --model with --data and -o (not both)")
    if run is not None and output is not None:
        raise XlalignError("-o goes with --model; with a RUN folder, origin.json goes into RUN")
    if model is not None and (data is None or output is None):
        raise XlalignError("--model needs --data (the corpus) and -o (the run folder)")
    lang_list = _csv_list(langs) if langs else None
    if lang_list is not None and len(lang_list) != 2:
        raise XlalignError(f"--langs takes two languages for the origin study, got {langs}")
    cfg = OriginConfig(
        null=null, n_perms=n_perms, seed=seed, stratify=stratify,
        langs=(lang_list[0], lang_list[1]) if lang_list else None,
    )  # fmt: skip
    _result, lines, path = run_origin(
        run=run, model=model, data=data, output=output, sites=sites, batch_size=batch_size,
        device=device, dtype=dtype, config=cfg, control_seed=control_seed if control else None,
        cached_npz=cached_npz, progress=progress,
    )  # fmt: skip
    print("\n".join(lines))
    print(f"wrote {path}")


@app.command("lens")
def lens_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder of a causal LM (last pool).")],
    sites: Annotated[str | None, typer.Option("--sites", help="Sites (default: all).")] = None,
    langs: Annotated[str | None, typer.Option("--langs", help="Languages (default: all).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Top tokens kept per prompt.")] = 5,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples for CIs.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 42,
    device: Annotated[
        str, typer.Option("--device", help="Where the norm and head run: cpu, cuda, auto.")
    ] = "cpu",
    control: Annotated[
        bool,
        typer.Option("--control/--no-control", help="Also decode RUN/control-random-init."),
    ] = True,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="The run's model at a new place (it moved); its weights must match the run's.",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """Logit lens by language: token-class mass of each site's last-token state (lens.json)."""
    from xlalign.store.run import load_run
    from xlalign.store.sites import parse_sites
    from xlalign.studies.lens import LensConfig, run_lens

    chosen = None
    if sites is not None:
        loaded = load_run(run)
        chosen = tuple(parse_sites(sites, loaded.n_layers, "final" in loaded.sites, where="run"))
    cfg = LensConfig(
        sites=chosen, langs=tuple(_csv_list(langs)) if langs else None, top_k=top_k,
        n_boot=n_boot, seed=seed, device=device, model=model,
    )  # fmt: skip
    _doc, lines, path = run_lens(run, cfg, control=control, progress=progress)
    print("\n".join(lines))
    print(f"wrote {path}")


@app.command("neurons")
def neurons_cmd(
    model: Annotated[
        str, typer.Option("--model", help="Hub id, local folder, .gguf file or named model.")
    ],
    data: Annotated[str, typer.Option("--data", help="Parallel corpus file/folder, or hsk.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    langs: Annotated[
        str | None, typer.Option("--langs", help="Languages, e.g. zh,en (default: all).")
    ] = None,
    data_n: Annotated[
        int | None, typer.Option("--data-n", help="With --data hsk: this many pairs.")
    ] = None,
    filter_rate: Annotated[
        float, typer.Option("--filter-rate", help="Quantile a candidate must exceed.")
    ] = 0.95,
    top_rate: Annotated[
        float, typer.Option("--top-rate", help="Share of neurons selected (paper: 0.01).")
    ] = 0.01,
    activation_bar: Annotated[
        float, typer.Option("--activation-bar", help="Quantile for a language's neurons.")
    ] = 0.95,
    heldout: Annotated[
        float, typer.Option("--heldout", help="Share of rows held out for the ablation.")
    ] = 0.5,
    max_eval: Annotated[
        int | None,
        typer.Option("--max-eval", help="Held-out prompts per language ablated (all if unset)."),
    ] = None,
    ablation: Annotated[
        bool, typer.Option("--ablation/--no-ablation", help="Causal test (causal LMs).")
    ] = True,
    control_seeds: Annotated[
        str, typer.Option("--control-seeds", help="Seeds of the random-neuron controls.")
    ] = "0,1,2",
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the splits and bootstrap.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Prompts per forward.")] = 16,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "auto",
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Run the model repo's own code.")
    ] = False,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """Language-specific neurons (LAPE) and their ablation against random neurons."""
    from xlalign.models.loading import ModelOptions
    from xlalign.pipeline.config import study_corpus
    from xlalign.pipeline.stages import run_neurons
    from xlalign.studies.neurons import NeuronsConfig

    try:
        seeds = tuple(int(s) for s in _csv_list(control_seeds))
    except ValueError:
        raise XlalignError(
            f"--control-seeds takes integers separated by commas, got '{control_seeds}'"
        ) from None
    cfg = NeuronsConfig(
        filter_rate=filter_rate, top_rate=top_rate, activation_bar=activation_bar,
        heldout=heldout, max_eval=max_eval, seed=seed, control_seeds=seeds, n_boot=n_boot,
        batch_size=batch_size, ablate=ablation,
    )  # fmt: skip
    lang_list = _csv_list(langs) if langs else None
    corpus = study_corpus(data, data_n, seed, lang_list)
    options = ModelOptions(device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    _doc, lines, paths = run_neurons(
        model, corpus, lang_list, output, cfg, options=options, progress=progress
    )
    print("\n".join(lines))
    print(f"wrote {paths['json']}")


def _numbers(flag: str, value: str, kind: type) -> tuple[Any, ...]:
    try:
        return tuple(kind(v) for v in _csv_list(value))
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise XlalignError(f"{flag} takes {what} separated by commas, got '{value}'") from None


@app.command("steer")
def steer_cmd(
    run: Annotated[Path, typer.Argument(help="Run folder of a causal LM.")],
    source: Annotated[str, typer.Option("--from", help="Language of the prompts, e.g. en.")],
    target: Annotated[str, typer.Option("--to", help="Language steered towards, e.g. zh.")],
    layers: Annotated[
        str | None,
        typer.Option("--layers", help="Blocks steered, e.g. 4,8,12 (default: every fourth)."),
    ] = None,
    alphas: Annotated[
        str,
        typer.Option("--alphas", help="Strengths, in units of the layer's mean state norm."),
    ] = "0.25,0.5",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Tokens generated per prompt (greedy).")
    ] = 12,
    pool: Annotated[
        str, typer.Option("--pool", help="Vectors the direction comes from: mean or last.")
    ] = "mean",
    max_prompts: Annotated[
        int, typer.Option("--max-prompts", help="Held-out prompts generated from, at most.")
    ] = 24,
    heldout: Annotated[
        float, typer.Option("--heldout", help="Share of rows held out from the direction.")
    ] = 0.5,
    control_seeds: Annotated[
        str, typer.Option("--control-seeds", help="Seeds of the random directions.")
    ] = "0,1,2",
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split and bootstrap.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per generate call.")] = 32,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="The run's model at a new place (it moved); its weights must match the run's.",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """Steer the output language with DiffMean directions, against random ones (steer.json)."""
    from xlalign.studies.steer import SteerConfig, run_steer

    cfg = SteerConfig(
        source=source, target=target,
        layers=_numbers("--layers", layers, int) if layers is not None else None,
        alphas=_numbers("--alphas", alphas, float), max_new_tokens=max_new_tokens, pool=pool,
        heldout=heldout, max_prompts=max_prompts, seed=seed,
        control_seeds=_numbers("--control-seeds", control_seeds, int), n_boot=n_boot,
        batch_size=batch_size, device=device, model=model,
    )  # fmt: skip
    _doc, lines, paths = run_steer(run, cfg, progress=progress)
    print("\n".join(lines))
    print(f"wrote {paths['json']}")


@app.command("run")
def run_cmd(
    config: Annotated[
        Path | None, typer.Option("--config", help="TOML file with any of these options.")
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="Hub id, local folder, .gguf file or named model."),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Parallel corpus file/folder, or hsk.")
    ] = None,
    data_n: Annotated[
        int | None, typer.Option("--data-n", help="With --data hsk: this many pairs.")
    ] = None,
    problems: Annotated[
        int | None, typer.Option("--problems", help="Use the study's N generated problems.")
    ] = None,
    langs: Annotated[str | None, typer.Option("--langs", help="Languages, e.g. zh,en.")] = None,
    output: Annotated[str | None, typer.Option("-o", "--output", help="Study folder.")] = None,
    sites: Annotated[str | None, typer.Option("--sites", help="Sites to capture.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help="Prompts per forward (32).")
    ] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu, cuda or auto.")] = None,
    dtype: Annotated[
        str | None, typer.Option("--dtype", help="float32, bfloat16 or float16.")
    ] = None,
    revision: Annotated[str | None, typer.Option("--revision", help="Hub revision.")] = None,
    trust_remote_code: Annotated[
        bool | None, typer.Option("--trust-remote-code", help="Run the model repo's own code.")
    ] = None,
    metrics: Annotated[
        str | None, typer.Option("--metrics", help="Sweep metrics (see xlalign align).")
    ] = None,
    null: Annotated[str | None, typer.Option("--null", help=NULL_HELP)] = None,
    n_perms: Annotated[
        int | None, typer.Option("--n-perms", help="Monte Carlo draws (1000).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of null and bootstrap (42).")
    ] = None,
    stratify: Annotated[
        str | None, typer.Option("--stratify", help="Sweep null permutes within this column.")
    ] = None,
    center: Annotated[
        bool | None, typer.Option("--center/--no-center", help="Remove language means.")
    ] = None,
    standardize: Annotated[
        bool | None,
        typer.Option("--standardize/--no-standardize", help="z-score each dimension first."),
    ] = None,
    lens: Annotated[
        bool | None,
        typer.Option("--lens/--no-lens", help="Logit-lens stage for causal LMs (on)."),
    ] = None,
    neurons: Annotated[
        bool | None,
        typer.Option(
            "--neurons/--no-neurons", help="Language-neuron stage for causal LMs (on; see neurons)."
        ),
    ] = None,
    neurons_top_rate: Annotated[
        float | None,
        typer.Option("--neurons-top-rate", help="Share of neurons LAPE selects (0.01)."),
    ] = None,
    neurons_max_eval: Annotated[
        int | None,
        typer.Option("--neurons-max-eval", help="Held-out prompts per language ablated (100)."),
    ] = None,
    steer: Annotated[
        str | None,
        typer.Option("--steer", help="Steering stage FROM:TO, e.g. en:zh (causal LMs; see steer)."),
    ] = None,
    pivot: Annotated[
        str | None, typer.Option("--pivot", help="Compare each language with it.")
    ] = None,
    n_boot: Annotated[
        int | None, typer.Option("--n-boot", help="Confidence intervals (0: none).")
    ] = None,
    null_perms: Annotated[
        int | None, typer.Option("--null-perms", help=NULL_PERMS_HELP + " (1000)")
    ] = None,
    backend: Annotated[str | None, typer.Option("--backend", help=BACKEND_HELP)] = None,
    control: Annotated[
        str | None, typer.Option("--control", help="random-init (default) or none.")
    ] = None,
    control_seed: Annotated[
        int | None, typer.Option("--control-seed", help="Seed of the random weights (0).")
    ] = None,
    heatmap_site: Annotated[
        str | None, typer.Option("--heatmap-site", help="Site of the heatmap (best z).")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Model name in the report (default: its id).")
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """The whole study: extract -> align -> origin -> lens -> neurons (-> steer) -> report, reusing
    what the folder holds."""
    from xlalign.pipeline.config import StudyConfig, load_config_file
    from xlalign.pipeline.study import run_study

    values = load_config_file(config) if config is not None else {}
    given = {
        "model": model, "data": data, "data_n": data_n, "problems": problems, "output": output, "sites": sites,
        "batch_size": batch_size, "device": device, "dtype": dtype, "revision": revision,
        "trust_remote_code": trust_remote_code, "null": null, "n_perms": n_perms, "seed": seed,
        "stratify": stratify, "center": center, "pivot": pivot, "n_boot": n_boot,
        "null_perms": null_perms, "standardize": standardize, "backend": backend, "lens": lens, "neurons": neurons,
        "neurons_top_rate": neurons_top_rate, "neurons_max_eval": neurons_max_eval,
        "steer": steer, "control": control, "control_seed": control_seed, "heatmap_site": heatmap_site,
        "label": label,
        "langs": tuple(_csv_list(langs)) if langs else None,
        "metrics": tuple(_csv_list(metrics)) if metrics else None,
    }  # fmt: skip
    flags = {k: v for k, v in given.items() if v is not None}
    if "data" in flags and "problems" in values:
        values.pop("problems")  # a flag overrides the config's choice of corpus
    if "problems" in flags and "data" in values:
        values.pop("data")
    cfg = StudyConfig(**{**values, **flags})
    result = run_study(cfg, command=sys.argv, progress=progress)
    print("\n".join([*result["summary"], *result["neurons"]]))
    report = result["paths"].get("report_html")
    if report is not None and not any(line.startswith("report:") for line in result["summary"]):
        print(f"report: {report}")


@app.command("demo")
def demo_cmd(
    model: Annotated[
        str, typer.Option("--model", help="qwen2.5-0.5b, gemma-3-270m, minilm (smoke run).")
    ] = "qwen2.5-0.5b",
    output: Annotated[Path, typer.Option("-o", "--output", help="Demo folder.")] = Path(
        "runs/demo"
    ),
    problems: Annotated[int, typer.Option("--problems", help="Number of problems.")] = 200,
    hsk: Annotated[
        int | None, typer.Option("--hsk", help="HSK pairs (500; minilm: 0 = no HSK study).")
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """The study's question on a real model, offline: problems + HSK, random-weights control."""
    from xlalign.pipeline.demo import DemoConfig, run_demo

    cfg = DemoConfig(model=model, output=str(output), problems=problems, hsk_pairs=hsk)
    result = run_demo(cfg, command=sys.argv, progress=progress)
    print(result["text"])
    print(f"answer: {result['answer']}")
    for name, study in result["studies"].items():
        print(
            f"report ({name}): {study['paths'].get('report_html', output / name / 'report.html')}"
        )


@app.command("compare")
def compare_cmd(
    runs: Annotated[
        list[Path], typer.Argument(help="Two or more run or study folders (xlalign run/extract).")
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", help="Folder for compare.json and the report.")
    ],
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="RUN=NAME (RUN as given, or its letter A, B...); repeat."),
    ] = None,
    k: Annotated[int, typer.Option("--k", help="Neighbours of mutual k-NN.")] = 10,
    n_perms: Annotated[
        int, typer.Option("--n-perms", help="Row permutations of the CKA null (0: none).")
    ] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the CKA null.")] = 0,
    pools: Annotated[
        str | None, typer.Option("--pools", "--pool", help="Pools (default: shared).")
    ] = None,
    langs: Annotated[
        str | None, typer.Option("--langs", help="Languages (default: shared).")
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = True,
) -> None:
    """Compare models on one corpus: curves on relative depth, model-to-model similarity."""
    from xlalign.studies.compare import CompareConfig, compare, parse_labels

    cfg = CompareConfig(
        k=k, n_perms=n_perms, seed=seed,
        pools=tuple(_csv_list(pools)) if pools else None,
        langs=tuple(_csv_list(langs)) if langs else None,
    )  # fmt: skip
    result = compare(
        [str(r) for r in runs], labels=parse_labels(label or []), output=output, config=cfg,
        progress=progress,
    )  # fmt: skip
    print("\n".join([result.headline, *result.summary, *result.warnings]))
    print(f"report: {result.paths['html']}")


def cli_reference() -> str:
    """Markdown: every subcommand with its arguments, options, defaults and help."""
    import typer

    group: Any = typer.main.get_command(app)
    lines = [
        "# xlalign command-line reference",
        "",
        "Generated from the CLI by `make cli-doc`; do not edit.",
        "",
    ]
    for name, cmd in group.commands.items():
        lines += [f"## `xlalign {name}`", "", (cmd.help or "").strip(), ""]
        rows = []
        for p in cmd.params:
            if p.param_type_name == "argument":
                flag = p.name.upper()
            else:
                flag = ", ".join(p.opts + list(p.secondary_opts))
            default = "" if p.required or p.default in (None, "") else f"`{p.default}`"
            need = "required" if p.required else default
            help_text = (getattr(p, "help", None) or "").replace("|", "\\|")
            rows.append(f"| `{flag}` | {need} | {help_text} |")
        if rows:
            lines += ["| option | default | meaning |", "| --- | --- | --- |", *rows, ""]
    return "\n".join(lines).rstrip() + "\n"


@contextmanager
def _plain_warnings() -> Iterator[None]:
    """Print xlalign's own warnings (:class:`~xlalign.errors.XlalignWarning`: the user's data or
    run) as one ``xlalign: warning:`` line each, every time, with no source line."""
    import warnings

    from xlalign.errors import XlalignWarning

    shown = warnings.showwarning

    def show(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if issubclass(category, XlalignWarning):
            print(f"xlalign: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, *args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("always", XlalignWarning)
        warnings.showwarning = show
        yield


def _disk_full_line(e: OSError) -> str | None:
    """One line for a full disk (or quota) met while writing an output, else None.

    Names the file where the error does, else the folder the command was writing; every output
    is written through a temporary file that the failed write removed (the previous file, or
    none, stays), and a folder the command created and left empty is removed with its lock.
    """
    from xlalign.store import lock
    from xlalign.store.space import DISK_FULL_ERRNOS

    if e.errno not in DISK_FULL_ERRNOS:
        return None
    reason = "no space left on the device" if e.errno == errno.ENOSPC else "disk quota exceeded"
    where = e.filename or (lock.written[-1] if lock.written else None)
    place = f" while writing {where}" if where else ""
    return f"{reason}{place}; free some space, then run the same command again"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 a user error, 1 anything else)."""
    from xlalign.store.lock import reading

    try:  # every run a command opens stays read-locked until it ends (xlalign.store.lock)
        with _plain_warnings(), reading():
            app(args=argv, prog_name="xlalign")
    except SystemExit as e:  # typer exits on --help and on usage errors (already printed)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if code == 130:  # typer turns Ctrl-C into a silent exit 130 before the handler below
            print("xlalign: interrupted", file=sys.stderr)
        return code
    except XlalignError as e:
        print(f"xlalign: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        line = _disk_full_line(e)
        if line is None:
            raise
        print(f"xlalign: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlalign: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
