"""The ``refusalstats`` command line.

Each command is a pair: ``_add_<name>(subparsers, opt)`` registers it (shared options come
from the parent parsers in ``opt``), ``_cmd_<name>(args)``
runs it. ``refusalstats --help`` lists them; ``refusalstats <command> --help`` explains one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import pandas as pd


class CLIError(ValueError):
    """A user error found by the command line itself (bad option value, output = input, ...)."""


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (replicates, draws, chains)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _conf_level(text: str) -> float:
    """argparse type: a confidence level strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), e.g. 0.95, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), e.g. 0.95, got {value:g}")
    return value


def _check_outputs(inputs, outputs) -> None:
    """Refuse an output path that is one of the inputs (never overwrite what the user gave)."""
    ins = {Path(p).resolve() for p in inputs if p}
    for opt, out in outputs:
        if out and Path(out).resolve() in ins:
            raise CLIError(f"{opt} {out} is the input table; choose another output file so "
                           "the input is not overwritten")


def _write_csv(frame: pd.DataFrame, path: str) -> None:
    """Write a CSV atomically (a temp file renamed over the target)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(tmp, index=False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _save_figure(fig, path) -> None:
    """Save a figure atomically (a temp file renamed over the target; format from the name)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fmt = target.suffix.lstrip(".").lower() or "png"
    try:
        fig.savefig(tmp, dpi=150, format=fmt)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _rate_text(k: int, n: int) -> str:
    """A rate as a percentage with enough significant digits for rare events (never 0.00%)."""
    if n == 0:
        return "n/a (no rows)"
    if k == 0:
        return "0%"
    pct = 100 * k / n
    return f"{pct:.2f}%" if pct >= 0.1 else f"{pct:.2g}%"


def _parse_mapping(text: str | None) -> dict[str, str]:
    """Parse ``"a=b,c=d"`` into a dict (used by --reference and --map)."""
    if not text:
        return {}
    out = {}
    for part in text.split(","):
        if "=" not in part:
            raise CLIError(f"expected key=value pairs separated by commas, got {part!r}")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _table_or_dataset(path: str, sep: str | None = None, where: list[str] | None = None):
    """A Parquet file, a folder of Parquet shards or a glob stays a path (the analysis
    streams it into counts, reading only the columns it uses); a text table is read.
    ``where`` (``--where COLUMN=VALUE``, repeatable) keeps the matching rows, read into memory."""
    if where:
        return _where_rows(_read_table(path, sep=sep, validate_table=False), where)
    p = Path(path)
    if p.is_dir() or any(ch in path for ch in "*?[") or p.suffix.lower() in (".parquet", ".pq"):
        return path
    return _read_table(path, sep=sep, validate_table=False)


def _where_rows(df: pd.DataFrame, where: list[str]) -> pd.DataFrame:
    """The rows of ``df`` where every ``COLUMN=VALUE`` of ``where`` holds (--where)."""
    keep = pd.Series(True, index=df.index)
    for cond in where:
        if "=" not in cond:
            raise CLIError(f"--where needs COLUMN=VALUE, e.g. --where setting=complete; got {cond!r}")
        col, value = (s.strip() for s in cond.split("=", 1))
        if col not in df.columns:
            import difflib

            close = difflib.get_close_matches(col, list(map(str, df.columns)), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise CLIError(f"--where {cond}: the table has no column {col!r}{hint}; its columns "
                           f"are {list(df.columns)}")
        values = df[col].astype(str)
        if not (values == value).any():
            seen = sorted(pd.unique(values))[:20]
            raise CLIError(f"--where {cond}: no row has {col} = {value!r}; {col} holds {seen}")
        keep &= values == value
    out = df[keep.to_numpy()].reset_index(drop=True)
    for c in out.columns:  # levels the filter removed are not levels of the analysis
        if isinstance(out[c].dtype, pd.CategoricalDtype):
            out[c] = out[c].cat.remove_unused_categories()
    return out


def _projected_rows(path: str, columns: list[str]) -> pd.DataFrame:
    """Only ``columns`` of a Parquet file, shard folder or glob, as a DataFrame."""
    from .sources import open_dataset

    return open_dataset(path).to_table(columns=list(columns)).to_pandas()


def _read_table(path: str, sep: str | None = None, validate_table: bool = True) -> pd.DataFrame:
    """Read a table; analysis commands pass validate_table=False so that only the columns
    they use are checked (NaN in an unused column is not an error)."""
    from .sources import read_responses

    return read_responses(path, sep=sep, validate_table=validate_table)


# --------------------------------------------------------------------------- shared options
class _Options:
    """Options several commands share, each defined once as an argparse parent parser.

    ``sub.add_parser(name, parents=opt("seed", "sep"))`` gives a command ``--debug`` (every
    command has it) plus the named options, with one help text everywhere.
    """

    def __init__(self) -> None:
        self._parents: dict[str, argparse.ArgumentParser] = {}
        self._new("debug").add_argument(
            "--debug", action="store_true",
            help="show Python tracebacks on errors (for bug reports)")
        self._new("seed").add_argument("--seed", type=int, default=0,
                                       help="random seed (default 0)")
        self._new("conf").add_argument("--conf", type=_conf_level, default=0.95,
                                       help="confidence level (default 0.95)")
        self._new("cluster").add_argument(
            "--cluster", default="auto", metavar="COLUMN",
            help="column of correlated answers (items answered many times) for "
                 "cluster-robust intervals and tests; 'auto' (default) uses item_id when "
                 "the table has it and it repeats; 'none' treats rows as independent; two "
                 "columns, e.g. 'item_id,persona', cluster two ways (sampled personas) in "
                 "rates and fit; sensitivity, cochran, disparity and --labels take one column")
        self._new("sep").add_argument(
            "--sep", help="field delimiter of a CSV table (default: guessed from the "
                          "header line among , ; tab |)")
        self._new("csv").add_argument("--csv", help="also write the table to this CSV file")
        self._new("format").add_argument(
            "--format", choices=["text", "markdown", "latex"], default="text",
            help="how to print the table (default text); markdown and latex format "
                 "p-values as '< 0.001'")
        self._new("where").add_argument(
            "--where", action="append", metavar="COLUMN=VALUE",
            help="analyse only the rows where COLUMN equals VALUE, e.g. setting=complete "
                 "(repeat to combine; the matching rows are read into memory)")

    def _new(self, name: str):
        """A parent parser; its option goes into the "common options" section of the help."""
        self._parents[name] = argparse.ArgumentParser(add_help=False)
        return self._parents[name].add_argument_group("common options")

    def __call__(self, *names: str) -> list[argparse.ArgumentParser]:
        """The parent parsers of ``names`` (always with ``--debug``)."""
        return [self._parents[n] for n in ("debug", *names)]


# --------------------------------------------------------------------------- demo
def _add_demo(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "demo",
        parents=opt("seed"),
        help="simulate P1's full design and run the analyses on it",
        description=(
            "Simulate the paper's design at full size (16 models x 3 tasks x 10 variations, "
            "2,032,160 rows, calibrated to its Table 1 and Table 7) with its persona-free "
            "prompts, de Araujo & Roth's complete design with control personas and answer "
            "text (simulate --full-study), write it to <out>/responses.parquet and run the "
            "analyses, printing their results: Table 1, Fig. 1, the detectors on the answers, "
            "Cochran's Q, disparity and Kendall's W, W2, the Table 7 regression, the "
            "hierarchical model and the HTML report."
        ),
    )
    p.add_argument("-o", "--out", default="demo", help="output folder (default: demo/)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's items (default 1.0)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, scale=args.scale, seed=args.seed)
    return 0


# --------------------------------------------------------------------------- simulate
def _add_simulate(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "simulate",
        parents=opt("seed"),
        help="write a paper-calibrated synthetic response table",
        description="Simulate P1's design (see refusalstats.simulate_paper) and write the tidy table.",
    )
    p.add_argument("-o", "--out", required=True, help="output file (.parquet, .csv or .jsonl)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's items")
    p.add_argument("--calibrate", choices=["table1", "table7"], default="table1")
    p.add_argument("--item-sd", type=float, default=1.0, help="sd of the item random intercept")
    p.add_argument("--persona-free", action="store_true",
                   help="add P1's persona-free setting (offensiveness items without a persona)")
    p.add_argument("--controls", action="store_true",
                   help="add de Araujo & Roth's complete design with 10 control personas "
                        "(column design = 'complete': every item under every persona; "
                        "cochran and disparity take --where design=complete)")
    p.add_argument("--answer-text", action="store_true",
                   help="add answer text (column response) that the default detector reads "
                        "as the simulated refusal 97%% / 99.8%% of the time")
    p.add_argument("--full-study", action="store_true",
                   help="all three: --persona-free --controls --answer-text (what "
                        "'refusalstats demo' simulates)")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args) -> int:
    from .simulate import simulate_paper
    from .table import _format_of, write_responses

    _format_of(Path(args.out), None)  # a bad output extension fails before the work

    extras = {k: bool(getattr(args, k) or args.full_study)
              for k in ("persona_free", "controls", "answer_text")}
    df = simulate_paper(scale=args.scale, seed=args.seed, calibrate=args.calibrate,
                        item_sd=args.item_sd, **extras)
    write_responses(df, args.out, metadata={"source": "refusalstats.simulate_paper", "scale": args.scale,
                                            "seed": args.seed, "calibrate": args.calibrate,
                                            "item_sd": args.item_sd, **extras})
    print(f"wrote {len(df):,} rows to {args.out}")
    return 0


# --------------------------------------------------------------------------- rates
def _add_rates(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "rates",
        parents=opt("conf", "cluster", "sep", "csv"),
        help="refusal rates with confidence intervals by any grouping",
        description="Refusal rate, n and CI per group of a response table.",
    )
    p.add_argument("table", help="response table (.parquet, .csv, .tsv, .jsonl), or a folder "
                                 "of Parquet shards / a glob (streamed, never loaded whole)")
    p.add_argument("--by", default="model,task", help="comma-separated grouping columns (default model,task)")
    p.add_argument("--method", default="wilson", choices=["wilson", "clopper-pearson", "jeffreys"])
    _label_options(p)
    p.set_defaults(func=_cmd_rates)


def _cluster_arg(args):
    value = getattr(args, "cluster", "auto")
    if value in (None, "none", "None"):
        return None
    names = [c.strip() for c in str(value).split(",") if c.strip()]
    return names if len(names) > 1 else value  # "item_id,persona": two-way clustering


def _cmd_rates(args) -> int:
    from .rates import refusal_rates

    _check_outputs([args.table], [("--csv", args.csv)])
    df = _table_or_dataset(args.table, sep=args.sep)
    by = [c.strip() for c in args.by.split(",") if c.strip()]
    if _labels_wanted(args):  # human labels: rows needed, rates corrected for the detector's errors
        df = _with_labels(args, df)
        res = refusal_rates(df, by=by, conf=args.conf, cluster=_cluster_arg(args), labels=args.labels,
                            strata=_columns_arg(args.strata))
        print(f"Refusal rates corrected by {res['n_labelled'].sum():,} human labels (column "
              f"{args.labels!r}; PPI++, {args.conf:.0%} intervals):")
        print(res.to_string(index=False))
        if args.csv:
            _write_csv(res, args.csv)
        return 0
    res = refusal_rates(df, by=by, method=args.method, conf=args.conf, cluster=_cluster_arg(args))
    print(_percent_table(res).to_string(index=False))
    if args.csv:
        _write_csv(res, args.csv)  # the tidy table: proportions
    return 0


#: Proportion columns the command line prints as percentages (as the report does).
_PERCENT_COLUMNS = ("rate", "ci_low", "ci_high", "refusal rate")


def _percent_table(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its proportion columns shown as percentages ('rate %', 2 decimals, or
    2 significant digits below 0.1%: rare refusals stay visible)."""
    out = frame.copy()
    for c in _PERCENT_COLUMNS:
        if c in out.columns:
            pct = 100 * out[c].astype(float)
            out[c] = [("" if pd.isna(v) else f"{v:.2f}" if v == 0 or abs(v) >= 0.1 else f"{v:.2g}")
                      for v in pct]
            out = out.rename(columns={c: f"{c} %"})
    return out


# --------------------------------------------------------------------------- import
def _add_import(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "import",
        parents=opt(),
        help="turn a published response dump into a tidy response table",
        description=(
            "Read another paper's published responses and write the tidy response table, so "
            "every refusalstats analysis runs on them. Sources: persona-behavior (de Araujo & "
            "Roth 2024's repository), xstest (XSTest completion files), generic (any CSV / "
            "JSONL / Parquet with a column mapping). Paths may be http(s) URLs: they are "
            "downloaded once into the cache ($REFUSALSTATS_CACHE or ~/.cache/refusalstats)."
        ),
    )
    isub = p.add_subparsers(dest="dump", metavar="<source>", required=True)

    pb = isub.add_parser(
        "persona-behavior",
        parents=opt(),
        help="peluz/persona-behavior: persona x item refusal matrices or raw generations",
        description=(
            "Load results/zero/<model>/<dataset>_refusals.csv (and results/control/zero/... "
            "with --control) from a clone of peluz/persona-behavior, or its raw generations "
            "re-classified by a detector (--source generations). The prompt column is the "
            "constant 'zero-shot' (P2 uses one prompt); setting is 'persona', or "
            "'persona-free' (persona 'none') for P2's baseline row 'empty'; P2's folder "
            "(regular/control) is in setting_original."
        ),
    )
    pb.add_argument("root", help="repository folder (holding results/ and data/), or its URL")
    pb.add_argument("-o", "--out", required=True, help="output file (.parquet, .csv or .jsonl)")
    pb.add_argument("--datasets", help="comma-separated subset of off,rac,truthfulqa,mmlu,bbq,attitude")
    pb.add_argument("--models", help="comma-separated model folders (default: all found)")
    pb.add_argument("--control", action="store_true", help="also load the 30 control personas")
    pb.add_argument("--source", choices=["matrices", "generations"], default="matrices")
    pb.add_argument("--detector", help="with --source generations: paper, xstest, hedge or default "
                                       "(default: P2's own hedge rule)")
    pb.add_argument("--no-categories", action="store_true",
                    help="do not read data/persona_cat.json")
    pb.add_argument("--sha256", action="append", metavar="PATH=HEX",
                    help="pin a file under the root to its SHA-256, e.g. "
                         "results/zero/llama-2-13b-chat-hf/rac_refusals.csv=3f2a...; repeat "
                         "for several (a load's digests are in the table's metadata, 'sha256')")
    pb.set_defaults(func=_cmd_import)

    xs = isub.add_parser(
        "xstest",
        parents=opt(),
        help="XSTest completion files (id, type, prompt, completion[, final_label])",
        description=("Load XSTest completions; prompt = the prompt type, safe = not contrast_*, "
                     "refusal from --detector, human final_label kept as label_refusal."),
    )
    xs.add_argument("files", nargs="+", help="completion files or URLs")
    xs.add_argument("-o", "--out", required=True, help="output file (.parquet, .csv or .jsonl)")
    xs.add_argument("--detector", default="xstest", help="detector name (default xstest)")
    xs.add_argument("--model", help="model name for every file (default: from the file name)")
    xs.add_argument("--partial-is-compliance", action="store_true",
                    help="count 3_partial_refusal as compliance in label_refusal")
    xs.add_argument("--label", choices=["detector", "human"], default="detector",
                    help="what 'refusal' holds: the detector's flag (default) or the human "
                         "final_label (the detector's flag is then kept in refusal_detector)")
    xs.add_argument("--sha256", action="append", metavar="[FILE=]HEX",
                    help="pin a file to its SHA-256 (HEX alone with one file; FILE=HEX, as "
                         "given on the command line, with several; repeat)")
    xs.set_defaults(func=_cmd_import)

    ge = isub.add_parser(
        "generic",
        parents=opt(),
        help="any CSV / TSV / JSONL / JSON / Parquet file with a column mapping",
        description="Map a file's columns onto the schema (model, task, persona, prompt, refusal).",
    )
    ge.add_argument("file", help="the file or its URL")
    ge.add_argument("-o", "--out", required=True, help="output file (.parquet, .csv or .jsonl)")
    ge.add_argument("--map", help="schema=column pairs, e.g. model=llm,response=output")
    ge.add_argument("--set", help="constant columns, e.g. task=qa,persona=none,prompt=p1")
    ge.add_argument("--detector", help="classify the text column with this detector")
    ge.add_argument("--text-column", default="response", help="column holding the answers")
    ge.add_argument("--sha256", metavar="HEX",
                    help="the file's expected SHA-256: a changed or corrupted file is refused")
    ge.set_defaults(func=_cmd_import)


def _cmd_import(args) -> int:
    from . import dumps
    from .table import _format_of, write_responses

    _format_of(Path(args.out), None)  # a bad output extension fails before the work, not after
    sources = [getattr(args, k) for k in ("root", "file") if getattr(args, k, None)]
    _check_outputs([*sources, *(getattr(args, "files", None) or [])], [("-o", args.out)])

    def _list(text):
        return [x.strip() for x in text.split(",") if x.strip()] if text else None

    def _pins(values, single_ok):
        if not values:
            return None
        if single_ok and len(values) == 1 and "=" not in values[0]:
            return values[0]
        pins = {}
        for v in values:
            if "=" not in v:
                raise CLIError(f"--sha256 {v!r}: give FILE=HEX when there are several files")
            k, h = v.rsplit("=", 1)
            pins[k.strip()] = h.strip()
        return pins

    try:
        if args.dump == "persona-behavior":
            df = dumps.persona_behavior(
                args.root, datasets=_list(args.datasets), control=args.control,
                source=args.source, detector=args.detector, models=_list(args.models),
                categories=False if args.no_categories else None,
                checksums=_pins(args.sha256, False),
            )
        elif args.dump == "xstest":
            df = dumps.xstest(args.files, detector=args.detector, model=args.model,
                              partial_as_refusal=not args.partial_is_compliance, label=args.label,
                              sha256=_pins(args.sha256, len(args.files) == 1))
        else:
            df = dumps.read_generic(args.file, _parse_mapping(args.map), detector=args.detector,
                                    text_column=args.text_column,
                                    constants=_parse_mapping(args.set) or None,
                                    sha256=args.sha256)
    except (dumps.DumpError, ValueError, TypeError) as exc:
        raise CLIError(_one_line(exc)) from None
    meta = dict(df.attrs.get("metadata", {}))
    write_responses(df, args.out, metadata=meta)
    from .vocabulary import persona_mask

    parts = [f"{df[c].nunique()} {c}s" for c in ("model", "task") if c in df.columns]
    has = persona_mask(df)  # the persona-free rows' persona ('none') is not a persona
    if "persona" in df.columns:
        parts.append(f"{df.loc[has, 'persona'].nunique()} personas")
    if not has.all():
        parts.append(f"{int((~has).sum()):,} persona-free rows")
    summary = ", ".join(parts)
    k = int(df["refusal"].sum())
    print(f"wrote {len(df):,} rows to {args.out} ({summary}; {k:,} refusals, rate "
          f"{_rate_text(k, len(df))})")
    return 0


# --------------------------------------------------------------------------- report
def _add_report(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "report",
        parents=opt("seed", "cluster", "sep"),
        help="one self-contained HTML report: every table and figure with its uncertainty",
        description=(
            "Run every analysis the table's columns support (rates by model x task, persona vs "
            "persona-free, per persona, per response type, W2 sensitivity indices, Firth "
            "logistic regression with a test per factor, the hierarchical model) and write "
            "<out>/report.html (figures embedded, readable offline), <out>/figures/*.png|svg "
            "and <out>/tables/*.csv. Analyses the data cannot support are skipped and the "
            "page says why."
        ),
    )
    p.add_argument("table", help="response table (.parquet, .csv, .jsonl)")
    p.add_argument("-o", "--out", default="report", help="output folder (default: report/)")
    p.add_argument("--formula", help="regression formula (default: refusal ~ persona + prompt "
                   "+ task + model, over the factors with >= 2 levels)")
    p.add_argument("--inputs", help="comma-separated W2 inputs (default: model,task,persona,prompt)")
    p.add_argument("--no-hierarchical", action="store_true",
                   help="skip the Bayesian hierarchical model (the slowest analysis)")
    p.add_argument("--hierarchical-formula", help="formula of the hierarchical model")
    p.add_argument("--n-boot", type=_positive_int, default=1000,
                   help="W2 bootstrap replicates (default 1000)")
    p.add_argument("--n-perm", type=_positive_int, default=200, help="W2 permutations (default 200)")
    p.add_argument("--title", default="False refusal report", help="page title")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args) -> int:
    from .reporting import report

    hier: bool | str = False if args.no_hierarchical else (args.hierarchical_formula or True)
    inputs = [c.strip() for c in args.inputs.split(",") if c.strip()] if args.inputs else None
    t0 = time.perf_counter()
    if Path(args.out).resolve() == Path(args.table).resolve():
        raise CLIError(f"-o {args.out} is the input table; the report needs a folder of its own")
    table = _table_or_dataset(args.table, sep=args.sep)
    rep = report(table, source=args.table, cluster=_cluster_arg(args), out=args.out,
                 formula=args.formula, inputs=inputs, hierarchical=hier, seed=args.seed,
                 title=args.title, options={"w2": {"n_boot": args.n_boot, "n_perm": args.n_perm}},
                 progress=not args.quiet)
    rep.print_summary(time.perf_counter() - t0)
    return 0


# --------------------------------------------------------------------------- sensitivity
def _add_sensitivity(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "sensitivity",
        parents=opt("conf", "sep", "cluster", "seed", "csv"),
        help="Wasserstein-2 sensitivity indices with bootstrap CIs and a permutation null",
        description=(
            "How much does each input move the distribution of the output? W2 sensitivity "
            "index iota in [0, 1] per input (Borgonovo et al. 2024; P1's Fig. 5), with "
            "stratified-bootstrap CIs, the permutation null (mean and 95% quantile: the "
            "finite-sample bias and a significance threshold) and iota minus the null mean."
        ),
    )
    p.add_argument("table", help="response table (.parquet, .csv, .jsonl)")
    p.add_argument("--inputs", default="model,task,persona,prompt",
                   help="comma-separated input columns (default model,task,persona,prompt)")
    p.add_argument("--output", default="refusal",
                   help="output column, or several comma-separated numeric columns (default refusal)")
    p.add_argument("--boot", type=_positive_int, default=1000, help="bootstrap replicates (default 1000)")
    p.add_argument("--perm", type=_positive_int, default=200,
                   help="permutations for the null (default 200)")
    p.add_argument("--ci", choices=["expanded", "percentile", "bc", "bca", "studentized"],
                   default="expanded",
                   help="bootstrap interval type (default expanded: the percentile interval "
                        "widened for few or unequal items; docs/methods_w2.md)")
    p.add_argument("--bootstrap", choices=["auto", "unstratified", "stratified"], default="auto",
                   help="how replicates are drawn (default auto: rows unstratified; with "
                        "clusters, items within each level of an item-level input)")
    p.add_argument("--partitions", default=None,
                   help="per-input partitions, e.g. 'age=10,model=levels' (numeric inputs: rank bins)")
    p.add_argument("--plot", help="also save the figure (bars, CIs, null band) to this file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_cmd_sensitivity)


def _cmd_sensitivity(args) -> int:
    from .sensitivity import RowsNeeded, w2_sensitivity

    _check_outputs([args.table], [("--csv", args.csv), ("--plot", args.plot)])
    df = _table_or_dataset(args.table, sep=args.sep)
    inputs = [c.strip() for c in args.inputs.split(",") if c.strip()]
    outs = [c.strip() for c in args.output.split(",") if c.strip()]
    parts: dict[str, int | str] = {}
    for k, v in _parse_mapping(args.partitions).items():
        if v != "levels" and not v.isdigit():
            raise CLIError(f"--partitions {k}={v}: use 'levels' or a number of rank bins")
        parts[k] = v if v == "levels" else int(v)
    kwargs = {"output": outs[0] if len(outs) == 1 else outs, "inputs": inputs,
                  "partitions": parts or None, "n_boot": args.boot, "n_perm": args.perm,
                  "conf": args.conf, "seed": args.seed, "ci": args.ci,
                  "progress": not args.no_progress, "cluster": _cluster_arg(args),
                  "bootstrap": args.bootstrap}
    try:
        res = w2_sensitivity(df, **kwargs)
    except RowsNeeded as exc:  # a numeric input or output: read only the columns it uses
        print(f"note: {exc.what} needs the rows: reading the {len(exc.columns)} column(s) "
              "it uses into memory", file=sys.stderr)
        res = w2_sensitivity(_projected_rows(args.table, exc.columns), **kwargs)
    by = (f"clustered by {res.cluster} ({res.n_clusters:,} clusters)" if res.cluster
          else "rows independent")
    print(f"W2 sensitivity of {res.output} ({res.output_kind}, N = {res.n:,}, {by}); "
          f"{res.conf:.0%} {res.ci_method} CIs from {args.boot} bootstrap replicates, "
          f"null from {args.perm} permutations")
    for note in res.notes:
        print(f"note: {note}")
    print(res.table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if args.csv:
        _write_csv(res.table, args.csv)
    if args.plot:
        _save_figure(res.plot(), args.plot)
    return 0


# --------------------------------------------------------------------------- fit
def _add_fit(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "fit",
        parents=opt("cluster", "conf", "sep", "seed", "format"),
        help="fit a formula logistic regression (MLE, Firth, ridge/lasso) and print an R-style summary",
        description=(
            "Fit refusal ~ predictors (R formula) to a response table on collapsed covariate "
            "patterns and print the summary like R's summary(glm), with a test of each term "
            "(cluster-robust Wald F when answers are clustered by item, likelihood-ratio "
            "otherwise). Example: refusalstats fit \"refusal ~ persona + task + prompt + model\" "
            "table.parquet --reference persona=Atheist,model=Llama2-13B --penalty firth "
            "--cluster item_id --csv coefficients.csv"
        ),
    )
    p.add_argument("formula", help='R formula, e.g. "refusal ~ persona + task + prompt + model"')
    p.add_argument("table", help="response table (.parquet, .csv, .jsonl)")
    p.add_argument("--reference", help="reference levels, e.g. persona=Atheist,model=Llama2-13B "
                   "(use 'paper' for P1's: persona Atheist, prompt p1, task nli, model Llama2-13B)")
    p.add_argument("--penalty", choices=["none", "firth", "l2", "l1", "elasticnet"], default="none")
    p.add_argument("--alpha", help="penalty strength for l2/l1/elasticnet, or 'cv'")
    p.add_argument("--l1-ratio", type=float, help="elastic-net mixing in (0, 1)")
    p.add_argument("--ci", choices=["wald", "profile", "bootstrap", "none"], help="interval method")
    p.add_argument("--vcov", choices=["CR2", "CR3", "CR1", "CR2-glm"],
                   help="cluster-robust covariance with --cluster: CR2 or CR3 (Satterthwaite t, HTZ tests; "
                        "default CR2, CR3 when the Kish effective number of clusters is below 20 and half "
                        "the clusters) "
                        "or CR1 (z, Wald F on G-1 df)")
    p.add_argument("--working", choices=["independence", "exchangeable"], default="independence",
                   help="working correlation within a cluster: independence (the logistic regression, "
                        "default) or exchangeable (GEE with the Mancl-DeRouen correction)")
    p.add_argument("--n-boot", type=_positive_int, default=999,
                   help="bootstrap replicates (--ci bootstrap)")
    p.add_argument("--adjust", choices=["holm", "bh"], help="adjust p-values within each term")
    p.add_argument("--no-tests", action="store_true", help="skip the test of each term")
    p.add_argument("--csv", help="write the coefficient table to this CSV file")
    _label_options(p)
    p.set_defaults(func=_cmd_fit)


def _cmd_fit(args) -> int:
    import warnings

    from .formula import FormulaError
    from .regression import logit
    from .simulate import PAPER_REFERENCE
    from .table import SchemaError

    _check_outputs([args.table], [("--csv", args.csv)])
    df = _table_or_dataset(args.table, sep=args.sep)
    reference = dict(PAPER_REFERENCE) if args.reference == "paper" else _parse_mapping(args.reference)
    alpha = args.alpha
    if alpha is not None and alpha != "cv":
        try:
            alpha = float(alpha)
        except ValueError:
            raise CLIError(f"--alpha must be a number or 'cv', got {args.alpha!r}") from None
    if _labels_wanted(args):  # human labels: the human-label model, powered by the flags (PPI++)
        fit = logit(args.formula, _with_labels(args, df), reference=reference or None,
                    cluster=_cluster_arg(args), conf=args.conf, labels=args.labels,
                    strata=_columns_arg(args.strata))
        print(fit.summary())
        if args.csv:
            _write_csv(fit.to_frame().rename_axis("term").reset_index(), args.csv)
        return 0
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # separation and convergence problems are in the summary
            fit = logit(args.formula, df, reference=reference or None,
                        penalty=None if args.penalty == "none" else args.penalty, alpha=alpha,
                        l1_ratio=args.l1_ratio, cluster=_cluster_arg(args), ci=args.ci, conf=args.conf,
                        n_boot=args.n_boot, seed=args.seed, vcov=args.vcov, working=args.working)
    except (FormulaError, SchemaError, ValueError) as exc:
        raise CLIError(_one_line(exc)) from None
    print(fit.summary())
    if not args.no_tests and fit.penalty in (None, "firth"):
        tests = fit.drop1()
        print(f"\nTest of each term (dropped from the full model): {tests.attrs.get('test', '')}")
        _print_table(tests, args.format)
    coef = fit.coef_table(adjust=args.adjust) if args.adjust else None
    if coef is not None:
        print(f"\nCoefficients with p-values adjusted within each term ({args.adjust}):")
        _print_table(coef.reset_index() if coef.index.name else coef, args.format)
    if args.csv:
        _write_csv(coef if coef is not None else fit.coef_table(), args.csv)
        print(f"wrote the coefficient table to {args.csv}")
    return 0


# --------------------------------------------------------------------------- bayes
def _add_bayes(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "bayes",
        parents=opt("seed", "sep"),
        help="fit a Bayesian hierarchical model with lme4-style random intercepts (PyMC, nutpie)",
        description=(
            "Fit refusal ~ fixed part + (1|group) random intercepts on collapsed binomial counts "
            "and print fixed effects, group sd's with HDIs, R-hat, ESS and divergences. Example: "
            "refusalstats bayes \"refusal ~ task + prompt + (1|model) + (1|persona) + "
            "(1|persona:model)\" table.parquet --effects persona --within model"
        ),
    )
    p.add_argument("formula", help='e.g. "refusal ~ task + prompt + (1|model) + (1|persona) + (1|persona:model)"')
    p.add_argument("table", help="response table (.parquet, .csv, .jsonl)")
    p.add_argument("--reference", help="reference levels of fixed factors, e.g. task=nli,prompt=p1")
    fit = _fit_defaults()
    p.add_argument("--draws", type=_positive_int, default=fit["draws"],
                   help=f"posterior draws per chain (default {fit['draws']})")
    p.add_argument("--tune", type=_positive_int, default=fit["tune"],
                   help=f"warm-up iterations per chain (default {fit['tune']})")
    p.add_argument("--chains", type=_positive_int, default=fit["chains"],
                   help=f"chains (default {fit['chains']})")
    p.add_argument("--sampler", choices=["nutpie", "pymc"], default=fit["sampler"])
    p.add_argument("--method", choices=["auto", "nuts", "laplace", "advi"], default=fit["method"],
                   help="auto (default): nuts up to 20,000 collapsed patterns, laplace above; "
                        "laplace: nested Laplace approximation (labelled approximate; fast with "
                        "(1|item_id)); advi: fast APPROXIMATE variational fit (no R-hat, "
                        "intervals too narrow)")
    p.add_argument("--target-accept", type=float, default=fit["target_accept"],
                   help=f"NUTS target acceptance (default {fit['target_accept']})")
    p.add_argument("--parametrization", choices=["auto", "centered", "noncentered"], default="auto")
    p.add_argument("--effects", help="print per-level effects of this grouping variable (e.g. persona)")
    p.add_argument("--within", help="... within each level of this one (e.g. model)")
    p.add_argument("--out", help="folder for idata.nc, summary.csv, effects.csv, ppc.png, shrinkage.png")
    p.set_defaults(func=_cmd_bayes)


def _fit_defaults() -> dict:
    """The sampler defaults, read from their one home (HierarchicalModel.fit's signature)."""
    import inspect

    from .bayes import HierarchicalModel

    return {n: q.default for n, q in inspect.signature(HierarchicalModel.fit).parameters.items()
            if q.default is not inspect.Parameter.empty}


def _cmd_bayes(args) -> int:
    from .bayes import hierarchical
    from .formula import FormulaError

    df = _table_or_dataset(args.table, sep=args.sep)
    try:
        fit = hierarchical(args.formula, df, reference=_parse_mapping(args.reference) or None,
                           draws=args.draws, tune=args.tune, chains=args.chains, sampler=args.sampler,
                           seed=args.seed, target_accept=args.target_accept, method=args.method,
                           parametrization=args.parametrization)
    except (FormulaError, ValueError) as exc:
        raise CLIError(_one_line(exc)) from None
    print(fit)
    eff = None
    if args.effects:
        try:
            eff = fit.effects(args.effects, within=args.within)
        except ValueError as exc:
            raise CLIError(_one_line(exc)) from None
        from .reporting.sections import effects_display

        print(f"\nEffects of {args.effects}" + (f" within {args.within}" if args.within else "")
              + " (change in refusal probability in percentage points, then log-odds; "
              "95% HDIs; the report shows the same):")
        print(effects_display(eff).to_string(index=False))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        fit.idata.to_netcdf(str(out / "idata.nc"))
        _write_csv(fit.to_frame().reset_index(), str(out / "summary.csv"))
        if eff is not None:
            _write_csv(eff, str(out / "effects.csv"))
        _save_figure(fit.plot_ppc(), out / "ppc.png")
        if args.effects:
            _save_figure(fit.plot_shrinkage(args.effects, within=args.within), out / "shrinkage.png")
        print(f"wrote results to {out}/")
    return 0



# --------------------------------------------------------------------------- cochran, disparity, agreement
def _columns_arg(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def _print_table(frame: pd.DataFrame, fmt: str = "text") -> None:
    from .reporting.export import to_latex, to_markdown

    if fmt == "markdown":
        print(to_markdown(frame))
    elif fmt == "latex":
        print(to_latex(frame))
    else:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.6g}"))


def _emit(frame: pd.DataFrame, args) -> None:
    _print_table(frame, args.format)
    if getattr(args, "csv", None):
        _write_csv(frame, args.csv)


def _add_cochran(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "cochran",
        parents=opt("seed", "cluster", "sep", "csv", "format", "where"),
        help="Cochran's Q: do refusal rates differ across conditions, items as complete blocks?",
        description=(
            "Cochran's Q test (de Araujo & Roth 2024) of refusal across the levels of "
            "--condition, each block (--cluster; auto means item_id) answered once under every "
            "condition. --method auto picks an exact test on small tables, the chi-square "
            "approximation when enough blocks carry information, a permutation test otherwise."
        ),
    )
    p.add_argument("table", help="response table (.parquet, .csv, .tsv, .jsonl)")
    p.add_argument("--condition", default="persona", help="within-block factor (default persona)")
    p.add_argument("--block", dest="cluster", help=argparse.SUPPRESS)  # old spelling of --cluster
    p.add_argument("--by", help="comma-separated columns to test separately (e.g. model,task)")
    p.add_argument("--method", choices=["auto", "exact", "permutation", "chi2"], default="auto")
    p.add_argument("--n-perm", type=_positive_int, default=9999,
                   help="permutations for --method permutation (default 9999)")
    p.add_argument("--adjust", choices=["holm", "bh"], help="adjust p-values across --by groups")
    p.set_defaults(func=_cmd_cochran)


def _cmd_cochran(args) -> int:
    from .agreement import cochran_q

    _check_outputs([args.table], [("--csv", args.csv)])
    cluster = _cluster_arg(args)
    df = _table_or_dataset(args.table, sep=args.sep, where=args.where)
    res = cochran_q(df, condition=args.condition,
                    cluster=cluster if cluster in (None, "auto") else _columns_arg(cluster),
                    by=_columns_arg(args.by), method=args.method, n_perm=args.n_perm,
                    seed=args.seed, adjust=args.adjust)
    _emit(res, args)
    return 0


def _add_disparity(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "disparity",
        parents=opt("conf", "seed", "cluster", "sep", "csv", "format", "where"),
        help="de Araujo & Roth's disparity: persona spread within a category over control spread",
        description=(
            "Standard deviation of persona refusal rates within each --category level divided "
            "by the standard deviation among control personas; with --n-boot, a cluster "
            "bootstrap interval (whole items resampled, --cluster)."
        ),
    )
    p.add_argument("table", help="response table (.parquet, .csv, .tsv, .jsonl)")
    p.add_argument("--category", default="persona_group", help="category column (default persona_group)")
    p.add_argument("--control", default="control",
                   help="control category level, or comma-separated control personas (default control)")
    p.add_argument("--by", help="comma-separated columns to compute separately (e.g. model)")
    p.add_argument("--n-boot", type=int, default=0,
                   help="bootstrap replicates for a CI (default 0: none)")
    p.add_argument("--estimator", choices=["corrected", "plug-in"], default="corrected",
                   help="corrected (default): sampling noise removed from both spreads, whose "
                        "bootstrap CI covers 95%%; plug-in: de Araujo & Roth's raw ratio")
    _label_options(p)
    p.set_defaults(func=_cmd_disparity)


def _cmd_disparity(args) -> int:
    from .persona_disparity import disparity

    _check_outputs([args.table], [("--csv", args.csv)])
    if args.n_boot < 0:
        raise CLIError(f"--n-boot must be 0 (no interval) or a positive number, got {args.n_boot}")
    df = _table_or_dataset(args.table, sep=args.sep, where=args.where)
    control = _columns_arg(args.control) or []
    control = control[0] if len(control) == 1 else control
    if _labels_wanted(args):  # human labels: persona rates corrected for the detector's errors (PPI++)
        if args.estimator != "corrected":
            raise CLIError("--labels gives the noise-corrected disparity only; drop --estimator "
                           f"{args.estimator}")
        df = _with_labels(args, df)
        res = disparity(df, category=args.category, control=control, by=_columns_arg(args.by),
                        n_boot=args.n_boot, conf=args.conf, seed=args.seed, cluster=_cluster_arg(args),
                        labels=args.labels, strata=_columns_arg(args.strata))
        n_labelled = int(df[args.labels].notna().sum())
        print(f"Disparity from persona rates corrected by {n_labelled:,} human labels (column "
              f"{args.labels!r}; PPI++):")
        _emit(res, args)
        return 0
    res = disparity(df, category=args.category, control=control,
                    by=_columns_arg(args.by), n_boot=args.n_boot, conf=args.conf, seed=args.seed,
                    cluster=_cluster_arg(args), estimator=args.estimator)
    _emit(res, args)
    return 0


def _add_agreement(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "agreement",
        parents=opt("sep", "csv", "format", "where"),
        help="do models rank personas alike? Kendall's tau per pair and Kendall's W",
        description="Rank agreement of --rater columns (default model) on --item rates (default persona).",
    )
    p.add_argument("table", help="response table (.parquet, .csv, .tsv, .jsonl)")
    p.add_argument("--item", default="persona", help="what is ranked (default persona)")
    p.add_argument("--rater", default="model", help="who ranks (default model)")
    p.add_argument("--by", help="comma-separated columns to compute separately (e.g. task)")
    p.add_argument("--adjust", choices=["holm", "bh"], help="adjust the pairwise p-values")
    p.add_argument("--pairs-csv", help="also write the pairwise taus to this CSV file")
    p.set_defaults(func=_cmd_agreement)


def _cmd_agreement(args) -> int:
    from .agreement import rank_agreement

    _check_outputs([args.table], [("--csv", args.csv), ("--pairs-csv", args.pairs_csv)])
    df = _table_or_dataset(args.table, sep=args.sep, where=args.where)
    res = rank_agreement(df, item=args.item, rater=args.rater, by=_columns_arg(args.by),
                         adjust=args.adjust)
    print("Kendall's W across raters:")
    _emit(res.concordance, args)
    print("\nKendall's tau-b between pairs of raters:")
    _print_table(res.pairs, args.format)
    note = res.constant_raters_note(args.rater, args.item)
    if note:
        print(f"\n{note}")
    if args.pairs_csv:
        _write_csv(res.pairs, args.pairs_csv)
    return 0


# --------------------------------------------------------------------------- main
# --------------------------------------------------------------------------- human labels (#22)
def _label_options(p) -> None:
    g = p.add_argument_group("human labels (correct for the detector's errors)")
    g.add_argument("--labels", metavar="COL",
                   help="column of human labels (0/1, empty where unlabelled): prediction-powered "
                        "estimates that carry the detector's error (PPI++)")
    g.add_argument("--label-file", metavar="FILE",
                   help="labelled sample from 'refusalstats label-sample' to join onto the table by "
                        "row_key first (its label column is --labels, default human)")
    g.add_argument("--strata", metavar="COLS",
                   help="comma-separated columns the labels were drawn within (label-sample's --by)")


def _labels_wanted(args) -> bool:
    if getattr(args, "label_file", None) and not args.labels:
        args.labels = "human"
    return bool(getattr(args, "labels", None))


def _with_labels(args, df):
    """The table as rows (labels need them), with the label file joined when given."""
    from .labels import join_labels

    if not isinstance(df, pd.DataFrame):
        df = _read_table(args.table, sep=getattr(args, "sep", None), validate_table=False)
    if args.label_file:
        df = join_labels(df, args.label_file, label=args.labels)
    return df


def _add_label_sample(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "label-sample",
        parents=opt("seed", "sep", "conf"),
        help="draw a stratified random sample of answers for people to label",
        description=(
            "Write the answers to label (CSV or Parquet by the suffix of -o) with a stable row_key "
            "and an empty 'human' column. Fill it with 1 (refusal) / 0, then pass it back with "
            "--label-file to rates, fit or detector-card. --target-width sizes the sample per "
            "stratum for a target width of the corrected rates' intervals."
        ),
    )
    p.add_argument("table", help="response table (.parquet, .csv, .jsonl)")
    p.add_argument("-o", "--out", required=True, help="file to write (.csv or .parquet)")
    p.add_argument("-n", type=_positive_int, help="labels in all (split in proportion to the strata), "
                                                   "or per stratum with --per-stratum")
    p.add_argument("--by", default="model", help="comma-separated strata columns (default model; '' for none)")
    p.add_argument("--per-stratum", action="store_true", help="-n labels from every stratum")
    p.add_argument("--target-width", type=float, metavar="W",
                   help="labels per stratum for corrected-rate intervals of full width W (e.g. 0.05), "
                        "from the detector's error rates (estimated from --labels, else assumed)")
    p.add_argument("--labels", metavar="COL", help="column of pilot labels already in the table "
                                                   "(unlabelled rows are drawn; error rates estimated)")
    p.add_argument("--sensitivity", type=float, help="assumed detector sensitivity (default 0.8)")
    p.add_argument("--specificity", type=float, help="assumed detector specificity (default 0.9)")
    p.set_defaults(func=_cmd_label_sample)


def _cmd_label_sample(args) -> int:
    from .labels import label_sample
    from .ppi import label_budget

    _check_outputs([args.table], [("--out", args.out)])
    if (args.n is None) == (args.target_width is None):
        raise CLIError("give either -n (how many labels) or --target-width (labels for a target width)")
    df = _read_table(args.table, sep=args.sep, validate_table=False)
    by = _columns_arg(args.by) or []
    pool = df
    if args.labels:
        if args.labels not in df.columns:
            raise CLIError(f"--labels {args.labels}: the table has no such column")
        pool = df[df[args.labels].isna()]
    n = args.n
    if args.target_width is not None:
        budget = label_budget(df, args.target_width, by or None, labels=args.labels,
                              sensitivity=args.sensitivity, specificity=args.specificity, conf=args.conf)
        print(f"Labels for {args.conf:.0%} intervals of width {args.target_width:g} (PPI++):")
        print(budget.to_string(index=False))
        todo = budget[budget["to_label"] > 0]
        if not len(todo):
            print("no more labels needed")
            return 0
        n = {tuple(r[c] for c in by) if len(by) > 1 else (r[by[0]] if by else 0): int(r["to_label"])
             for _, r in todo.iterrows()}
    sample = label_sample(pool.drop(columns=[args.labels]) if args.labels else pool, n, by or None,
                          seed=args.seed, allocation="per_stratum" if args.per_stratum else "proportional")
    path = Path(args.out)
    if path.suffix.lower() in (".parquet", ".pq"):
        sample.to_parquet(path, index=False)
    else:
        sample.to_csv(path, index=False)
    print(f"wrote {len(sample):,} answers to label to {args.out} (fill the 'human' column: 1 refusal, 0 not)")
    return 0


def _add_detector_card(sub, opt: _Options) -> None:
    p = sub.add_parser(
        "detector-card",
        parents=opt("conf", "cluster", "sep", "csv", "format"),
        help="the detector against human labels: sensitivity, specificity, raw vs corrected rates",
        description=(
            "Per group: the detector's sensitivity and specificity on the labelled answers (Wilson "
            "intervals), the raw flag rate and its interval, the corrected rate (PPI++) and its "
            "interval, and whether the raw finding changes (corrected rate outside the raw interval)."
        ),
    )
    p.add_argument("table", help="response table with a label column (or use --label-file)")
    p.add_argument("--by", default="model", help="comma-separated groups (default model)")
    _label_options(p)
    p.set_defaults(func=_cmd_detector_card)


def _cmd_detector_card(args) -> int:
    from .labels import detector_card

    _check_outputs([args.table], [("--csv", args.csv)])
    if not _labels_wanted(args):
        raise CLIError("detector-card needs human labels: --labels COL or --label-file FILE")
    df = _with_labels(args, _read_table(args.table, sep=args.sep, validate_table=False))
    card = detector_card(df, _columns_arg(args.by), labels=args.labels, conf=args.conf,
                         cluster=_cluster_arg(args), strata=_columns_arg(args.strata))
    _emit(card, args)
    return 0


_COMMANDS = [_add_demo, _add_simulate, _add_rates, _add_fit, _add_import, _add_report,
             _add_sensitivity, _add_bayes, _add_cochran, _add_disparity,
             _add_agreement, _add_label_sample, _add_detector_card]

#: Entry-point group of commands other packages add (``name = "module:add_function"``,
#: called as ``add(subparsers, opt)``): the inference part's ``design``, ``generate`` and
#: ``collect`` (:mod:`refusalstats.inference.cli`). The core never imports them by name.
COMMAND_ENTRY_POINTS = "refusalstats.commands"


def _add_plugin_commands(sub, opt: _Options) -> None:
    """Register the commands of :data:`COMMAND_ENTRY_POINTS`; one whose module does not
    import (the inference extra is missing) becomes a command that says what to install."""
    from importlib.metadata import entry_points

    for ep in sorted(entry_points(group=COMMAND_ENTRY_POINTS), key=lambda e: e.name):
        try:
            add = ep.load()
        except ImportError as exc:
            # takes any arguments (no option prefix), so it can say what is missing
            p = sub.add_parser(ep.name, add_help=False, prefix_chars="\x00",
                               help=f"(needs the inference extra: {exc.name or exc})")
            p.add_argument("rest", nargs="*")
            p.set_defaults(func=_needs_extra(ep.name, exc))
            continue
        add(sub, opt)


def _needs_extra(name: str, exc: ImportError):
    def run(args) -> int:
        raise CLIError(f"'refusalstats {name}' needs the inference part, which does not import "
                       f"({exc}): pip install 'refusalstats[inference]'")
    return run


def build_parser() -> argparse.ArgumentParser:
    """The ``refusalstats`` parser: one subparser per command.

    Returns
    -------
    argparse.ArgumentParser
    """
    opt = _Options()
    parser = argparse.ArgumentParser(
        prog="refusalstats",
        parents=opt(),  # --debug, also accepted after the command
        description=(
            "Study false refusal in language models: run persona x task x prompt x model "
            "experiments, fit R-style models to the tidy response table, and report with "
            "honest uncertainty. Run 'refusalstats <command> --help' for a command's options."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for add in _COMMANDS:
        add(sub, opt)
    _add_plugin_commands(sub, opt)
    return parser


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (a SchemaError lists its problems joined by '; ')."""
    problems = getattr(exc, "problems", None)
    if problems:
        return "; ".join(str(p) for p in problems)
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    parts = [re.sub(r"^- ", "", ln.strip()) for ln in text.splitlines() if ln.strip()]
    return "; ".join(parts) or type(exc).__name__


#: Python spellings in library messages and their command-line equivalents.
_CLI_WORDS = (("cluster=None", "--cluster none"), ("cluster='item_id'", "--cluster item_id"),
              ("sep=", "--sep "), ("n_boot", "--n-boot"), ("n_perm", "--n-perm"))


def _speak_cli(text: str) -> str:
    for py, cli in _CLI_WORDS:
        text = text.replace(py, cli)
    return text


def _user_error(exc: BaseException) -> bool:
    """Errors that mean "the input or an option is wrong" (exit 2), not a bug (exit 1)."""
    if isinstance(exc, (ValueError, KeyError, TypeError, LookupError, OSError)):
        return True
    try:
        import pyarrow as pa

        return isinstance(exc, pa.ArrowException)
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        return False


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings on the command line: one line, no Python source."""
    print(f"warning: {_speak_cli(_one_line(message) if isinstance(message, Exception) else str(message))}",
          file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; user errors print ``error: ...`` on stderr and return 2.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0 success, 2 a user error, 1 an internal error, 130 interrupted.
    """
    import warnings

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    args = parser.parse_args([a for a in argv if a != "--debug"])
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if debug:
        try:
            return int(args.func(args) or 0)
        except CLIError as exc:
            # the error the command translated into one line: show it and its traceback
            original = exc.__cause__ or exc.__context__
            if original is not None:
                raise original from None
            raise
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's error contract is decided here
        if _user_error(exc):
            msg = _one_line(exc)
            if isinstance(exc, FileNotFoundError) and " " not in msg.strip():
                msg = f"no such file or folder: {msg}"  # pyarrow's message is the bare path
            print(f"error: {_speak_cli(msg)}", file=sys.stderr)
            return 2
        print(f"error: internal error ({type(exc).__name__}: {_one_line(exc)}); rerun with "
              "--debug for the traceback and please report it", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
