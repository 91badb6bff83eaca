#!/usr/bin/env bash
# Every figure of docs/chat_model.md for one model, through the same harness for base and chat:
#   bench/chat_model.sh chat [OUT]      # tinygemma's instruction-tuned 270M (the shipped adapter)
#   bench/chat_model.sh base [OUT]      # the embedded base model, through the chat template too
# IFEval: 541 prompts, chat template, greedy, 1,280 new tokens (as lm-evaluation-harness), with the share of
# answers that ended by themselves; story compliance on the 50 held-out choice sets; GSM8K on the fixed
# 250-question subset; perplexity on ../shared/reference/ppl_text.txt; load time. IFEVAL_LIMIT=N runs the first N
# prompts; ONLY="ifeval perplexity" runs some of the parts.
set -euo pipefail
model=${1:?usage: bench/chat_model.sh chat|base|PATH [OUT]}
out=${2:-bench/results/chat_model/$(basename "$model")}
shared=${SHARED:-../shared}
tg=${TINYGEMMA:-tinygemma}
mkdir -p "$out"
limit=()
[ -n "${IFEVAL_LIMIT:-}" ] && limit=(--limit "$IFEVAL_LIMIT")
grep -o -w 'avx2\|avx512f\|avx512_vnni\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ' > "$out/cpu.txt"
run() {
    local name=$1; shift
    case " ${ONLY:-ifeval stories gsm8k perplexity load} " in *" $name "*) ;; *) return 0 ;; esac
    /usr/bin/time -f "%e s wall, %M KB peak" -o "$out/$name.time" "$@" | tee "$out/$name.txt"
}
run ifeval "$tg" eval ifeval --model "$model" --mode chat --max-tokens 1280 --data "$shared/data/ifeval" \
    --out "$out/ifeval" "${limit[@]}"
run stories "$tg" eval stories --model "$model" --mode auto --out "$out/stories"
run gsm8k "$tg" eval gsm8k --model "$model" --mode auto --max-tokens 256 --data "$shared/data/gsm8k/test.jsonl" \
    --out "$out/gsm8k"
run perplexity "$tg" eval perplexity "$shared/reference/ppl_text.txt" --model "$model"
# Load time: the first load in this process may convert (once per machine, then cached); the second maps the cache.
py=${PYTHON:-python}
run load "$py" -c "
import time, tinygemma
t = time.perf_counter(); tinygemma.load('$model'); first = time.perf_counter() - t
t = time.perf_counter(); tinygemma.load('$model'); second = time.perf_counter() - t
print(f'load: first {first:.2f} s, again {second:.2f} s')"
