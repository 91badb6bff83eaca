"""tinygemma eval {ifeval, perplexity, classify, extract, stories, gsm8k}: measure a model, or score outputs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..files import check_regular_file, check_writable_dir, check_writable_file
from .common import add_model_args, load_model

DEFAULT_IFEVAL_MAX_TOKENS = 512
DEFAULT_EXTRACT_MAX_TOKENS = 64
DEFAULT_EXTRACT_BATCH = 32
DEFAULT_OUT = "eval_out"
PERPLEXITY_CTX = 512      # llama.cpp's llama-perplexity default, so figures compare


def build_parser(p):
    sub = p.add_subparsers(dest="eval_task", metavar="TASK", required=True)

    q = sub.add_parser("ifeval", help="IFEval: generate responses to the 541 prompts (or score a response file)",
                       description="IFEval's four metrics (prompt/instruction level, strict/loose).")
    q.add_argument("--data", metavar="DIR", help="folder with input_data.jsonl (default: shared/data/ifeval "
                   "beside the project)")
    q.add_argument("--responses", metavar="FILE", help="score this jsonl of {prompt, response} rows; no model runs")
    q.add_argument("--limit", type=int, metavar="N", help="only the first N prompts")
    q.add_argument("--max-tokens", type=int, default=DEFAULT_IFEVAL_MAX_TOKENS, help="tokens per response at most")
    q.add_argument("--mode", choices=["auto", "chat", "completion"], default="auto",
                   help="prompt format: chat template, raw prompt, or auto (chat for instruction-tuned weights)")
    q.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help="where ifeval.json / ifeval.md go")
    add_model_args(q)

    q = sub.add_parser("perplexity", help="perplexity of a text file (512-token chunks, llama.cpp's method)",
                       description="Perplexity of a UTF-8 text file, scored like llama-perplexity.")
    q.add_argument("file", help="UTF-8 text file")
    q.add_argument("--ctx", type=int, default=PERPLEXITY_CTX, help="chunk length in tokens")
    q.add_argument("--max-chunks", type=int, metavar="N", help="score only the first N chunks")
    q.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_args(q)

    q = sub.add_parser("classify", help="accuracy, macro-F1 and confusion matrix of a predictions file",
                       description="Score a .csv or .jsonl file with label and prediction columns.")
    q.add_argument("--predictions", required=True, metavar="FILE", help=".csv (with header) or .jsonl")
    q.add_argument("--label-column", default="label")
    q.add_argument("--prediction-column", default="prediction")
    q.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help="where classification.json / .md / confusion_matrix.png go")
    q.add_argument("--no-png", action="store_true", help="skip the confusion-matrix PNG (no matplotlib needed)")

    q = sub.add_parser("extract", help="slot extraction text -> JSON (restaurant8k): exact match and slot F1",
                       description="Generate JSON for restaurant8k utterances (greedy, constrained to the slot "
                       "schema) and score exact match, slot-level precision/recall/F1 and valid JSON; or, with "
                       "--prepare, write the prompt/completion .jsonl that 'tinygemma finetune --data' reads. "
                       "Typical run: eval extract --data train.json --prepare r8k_train.jsonl; finetune --data "
                       "r8k_train.jsonl --out r8k; eval extract --data test.json --adapter r8k/adapter.")
    q.add_argument("--data", required=True, metavar="FILE",
                   help="restaurant8k file as published (a JSON array: train.json or test.json)")
    q.add_argument("--prepare", metavar="OUT.jsonl", help="write fine-tuning rows {prompt, completion} here "
                   "instead of evaluating (no model runs)")
    q.add_argument("--limit", type=int, metavar="N", help="only the first N examples")
    q.add_argument("--max-tokens", type=int, default=DEFAULT_EXTRACT_MAX_TOKENS, help="tokens per output at most")
    q.add_argument("--batch", type=int, default=DEFAULT_EXTRACT_BATCH, help="outputs generated at once")
    q.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help="where extraction.json / extraction.md go")
    add_model_args(q)

    q = sub.add_parser("stories", help="story compliance on 50 fixed choice sets (character, setting, ending, length)",
                       description="Generate a story (greedy) for each of the 50 held-out choice sets of "
                       "tinygemma.train.stories and score by code: names the character and the setting, ends by "
                       "itself, length within the requested range.")
    q.add_argument("--limit", type=int, metavar="N", help="only the first N choice sets")
    q.add_argument("--mode", choices=["auto", "chat", "book"], default="auto",
                   help="prompt: chat template, the base model's story-book page, or auto (chat when tuned)")
    q.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help="where stories.json goes")
    add_model_args(q)

    q = sub.add_parser("gsm8k", help="GSM8K accuracy on a fixed 250-question subset of the test split",
                       description="Greedy answers to a seeded subset of GSM8K's test questions; the number after "
                       "'answer is' / '####' (else the last number) against the reference.")
    q.add_argument("--data", metavar="FILE", help="GSM8K test.jsonl (default: shared/data/gsm8k/test.jsonl beside "
                   "the project)")
    q.add_argument("--n", type=int, default=250, help="questions in the subset (default 250)")
    q.add_argument("--max-tokens", type=int, default=512, help="tokens per answer at most")
    q.add_argument("--mode", choices=["auto", "chat", "completion"], default="auto")
    q.add_argument("--out", metavar="DIR", default=DEFAULT_OUT, help="where gsm8k.json goes")
    add_model_args(q)
    return p


def default_ifeval_dir() -> Path:
    """shared/data/ifeval beside the project checkout (../shared from the repository root), else from cwd."""
    beside_repo = Path(__file__).resolve().parents[3] / "shared" / "data" / "ifeval"
    return beside_repo if beside_repo.is_dir() else Path("../shared/data/ifeval")


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def run_ifeval(args) -> int:
    from ..eval import ifeval

    _positive("--limit", args.limit)
    _positive("--max-tokens", args.max_tokens)
    check_writable_dir(args.out, "output directory (--out)")       # before minutes of generation
    prompts = ifeval.load_prompts(args.data or default_ifeval_dir(), limit=args.limit)
    if args.responses:
        report = ifeval.score(prompts, ifeval.read_responses(args.responses, prompts),
                              {"responses": str(args.responses)})
    else:
        report = _run_model(args, len(prompts), "IFEval", "prompt", lambda lm, **kw: ifeval.run(
            lm, prompts, max_tokens=args.max_tokens, mode=args.mode, **kw))
    if "ended_by_itself" in report.info:
        print(f"{'ended by itself':24s} {100 * report.info['ended_by_itself']:6.2f}%")
    _print_report(report.metrics, ifeval.METRICS, ifeval.write_reports(report, args.out))
    return 0


def _run_model(args, total: int, desc: str, unit: str, run, **info):
    """Load the model and return run(lm, progress=..., info=...) under a progress bar of `total` steps."""
    from tqdm import tqdm

    lm = load_model(args)
    from ..models import model_id

    info = {"model": model_id(lm.resolved) if lm.resolved else "in-memory", "dtype": args.dtype or "fast", **info}
    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr) as bar:
        return run(lm, progress=lambda done, n: bar.update(1), info=info)


def _print_report(metrics: dict[str, float], names, paths: dict) -> None:
    """The metrics (percentages, aligned) and where the JSON and Markdown reports went."""
    width = max(len(name) for name in names) + 2
    for name in names:
        print(f"{name.replace('_', ' '):{width}s} {100 * metrics[name]:6.2f}%")
    print(f"reports: {paths['json']}, {paths['markdown']}")


def run_perplexity(args) -> int:
    from ..eval.perplexity import perplexity

    _positive("--max-chunks", args.max_chunks)
    _positive("--ctx", args.ctx)
    raw = check_regular_file(args.file, "text file").read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{args.file}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    lm = load_model(args)
    result = perplexity(lm, text, ctx=args.ctx, max_chunks=args.max_chunks)
    if args.json:
        print(json.dumps({"file": args.file, "ctx": args.ctx, "ppl": result.ppl, "nll": result.nll,
                          "chunks": result.chunks, "tokens_scored": result.tokens_scored,
                          "seconds": round(result.seconds, 2)}))
    else:
        print(f"perplexity {result.ppl:.4f} over {result.chunks} chunks of {args.ctx} tokens "
              f"({result.tokens_scored} tokens scored, {result.seconds:.1f} s)")
    return 0


def run_classify(args) -> int:
    from ..eval import classification

    check_writable_dir(args.out, "output directory (--out)")
    y_true, y_pred = classification.read_predictions(args.predictions, args.label_column, args.prediction_column)
    report = classification.classification_report(y_true, y_pred)
    paths = classification.write_reports(report, args.out, png=not args.no_png)
    print(f"accuracy {100 * report.accuracy:.2f}%  macro-F1 {100 * report.macro_f1:.2f}%  "
          f"({report.n} examples, {len(report.labels)} classes)")
    print("reports: " + ", ".join(str(p) for p in paths.values()))
    return 0


def run_extract(args) -> int:
    from ..eval import extraction

    _positive("--limit", args.limit)
    _positive("--max-tokens", args.max_tokens)
    _positive("--batch", args.batch)
    if args.prepare:
        check_writable_file(args.prepare, "--prepare file")
        n = extraction.prepare(args.data, args.prepare, limit=args.limit)
        print(f"wrote {n} prompt/completion rows to {args.prepare}")
        return 0
    check_writable_dir(args.out, "output directory (--out)")       # before the model runs
    examples = extraction.restaurant8k_examples(args.data, limit=args.limit)
    if not examples:
        raise ValueError(f"{args.data}: no examples")
    report = _run_model(args, len(examples), "extract", "example", lambda lm, **kw: extraction.run(
        lm, examples, max_tokens=args.max_tokens, batch=args.batch, **kw), data=str(args.data), adapter=args.adapter)
    _print_report(report.metrics, extraction.METRICS, extraction.write_reports(report, args.out))
    return 0


def main(args) -> int:
    return {"ifeval": run_ifeval, "perplexity": run_perplexity, "classify": run_classify,
            "extract": run_extract, "stories": run_stories, "gsm8k": run_gsm8k}[args.eval_task](args)


def _tuned(mode: str) -> bool | None:
    return {"chat": True, "book": False, "completion": False}.get(mode)


def run_stories(args) -> int:
    from ..eval import chat_eval
    from ..train.stories import held_out_choices

    _positive("--limit", args.limit)
    check_writable_dir(args.out, "output directory (--out)")
    sets = held_out_choices()[:args.limit]
    report = _run_model(args, len(sets), "stories", "story", lambda lm, progress, info: {
        **chat_eval.run_stories(lm, sets, _tuned(args.mode), progress=progress), "info": info})
    path = chat_eval.write_report(report, args.out, "stories")
    for name, value in report["metrics"].items():
        print(f"{name.replace('_', ' '):16s} {100 * value:6.2f}%")
    print(f"report: {path}")
    return 0


def run_gsm8k(args) -> int:
    from ..eval import chat_eval

    _positive("--n", args.n)
    _positive("--max-tokens", args.max_tokens)
    check_writable_dir(args.out, "output directory (--out)")
    data = args.data or default_ifeval_dir().parent / "gsm8k" / "test.jsonl"
    rows = chat_eval.gsm8k_subset(check_regular_file(data, "GSM8K file"), args.n)
    report = _run_model(args, len(rows), "GSM8K", "question", lambda lm, progress, info: {
        **chat_eval.run_gsm8k(lm, rows, args.max_tokens, _tuned(args.mode), progress=progress), "info": info})
    path = chat_eval.write_report(report, args.out, "gsm8k")
    m = report["metrics"]
    print(f"accuracy {100 * m['accuracy']:.2f}% ({len(rows)} questions; {100 * m['ended_by_itself']:.1f}% of answers "
          f"ended by themselves)\nreport: {path}")
    return 0
