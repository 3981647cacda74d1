"""Cost of the worst ``targets`` text the API accepts, and of the over-long texts it refuses.

The worst accepted request is at every cap of :class:`service.prompt_targets.PromptLimits` (32
targets, 1023 characters, none over 64) and made of made-up words joined by "and", so every
prompt misses the name and word rules, is split on "and", and each piece and the whole are
embedded (three MiniLM passes per prompt) before difflib looks for suggestions. Measured
in-process on :func:`service.prompt_targets.resolve_request_targets`, the function the route
calls: cold (the embedding model loads), warm with new prompts (cache misses), and warm with
the same prompts again (cache hits); the peak RSS is the kernel's.

    python -m benchmarks.prompt_cost
"""

from __future__ import annotations

import random
import resource
import time

from fastapi import FastAPI

from model.targets.vocabulary import UnknownTargetError, default_vocabulary
from service.prompt_targets import EmbeddingBudgetSpent, PromptLimits, TargetTextTooLong, resolve_request_targets

LETTERS = "bcdfghjklmnpqrstvwxz"


def made_up_prompts(seed: int, limits: PromptLimits) -> str:
    """``limits.max_targets`` prompts like 'zorbq flimt and quaxe snirp', as long as the caps allow."""
    rng = random.Random(seed)
    per_prompt = min(limits.max_target_chars, (limits.max_total_chars + 1) // limits.max_targets - 1)

    def word(n: int) -> str:
        return "".join(rng.choice(LETTERS) if i % 2 == 0 else rng.choice("aeiou") for i in range(n))

    prompts = []
    for _ in range(limits.max_targets):
        half = (per_prompt - 5) // 2
        left = (word(half // 2) + " " + word(half - half // 2 - 1))[:half]
        right = (word(half // 2) + " " + word(per_prompt - 5 - half - half // 2 - 1))[: per_prompt - 5 - half]
        prompts.append(f"{left} and {right}")
    text = ",".join(prompts)
    assert len(text) <= limits.max_total_chars, len(text)
    return text


VOCABULARY = default_vocabulary()


def timed(app: FastAPI, text: str, limits: PromptLimits) -> tuple[float, str]:
    vocabulary = VOCABULARY
    start = time.perf_counter()
    try:
        resolve_request_targets(app, vocabulary, text, limits)
        outcome = "resolved"
    except EmbeddingBudgetSpent:
        outcome = "422 (embedding budget)"
    except TargetTextTooLong:
        outcome = "422 (over a cap)"
    except UnknownTargetError:
        outcome = "422 (unknown targets)"
    return time.perf_counter() - start, outcome


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    limits = PromptLimits()
    app = FastAPI()
    rows = []
    base = rss_mb()
    worst = made_up_prompts(0, limits)
    rows.append(("worst accepted, cold (model loads)", len(worst), *timed(app, worst, limits), rss_mb() - base))
    fresh = made_up_prompts(1, limits)
    rows.append(("worst accepted, warm, new prompts", len(fresh), *timed(app, fresh, limits), rss_mb() - base))
    rows.append(("worst accepted, warm, same prompts", len(fresh), *timed(app, fresh, limits), rss_mb() - base))
    for label, text in (("14,000 characters (refused)", "kidney stone and liver, " * 583 + "x"),
                        ("one 65-character target (refused)", "a" * 65)):
        rows.append((label, len(text), *timed(app, text, limits), rss_mb() - base))
    print(f"{'request':<40} {'chars':>6} {'seconds':>9}  {'outcome':<24} {'peak RSS +MB':>12}")
    for label, chars, seconds, outcome, rss in rows:
        print(f"{label:<40} {chars:>6} {seconds:>9.3f}  {outcome:<24} {rss:>12.1f}")


if __name__ == "__main__":
    main()
