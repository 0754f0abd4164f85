"""Replay benchmark: is replay (and not the SDK) ever the bottleneck? Prints ONE JSON object.

Workload: the shipped ``coffee_sports`` mimic data set (200 first-person messages) as 800
distinct conversations (each message alone, and as a follow-up turn after three other
exchanges), replayed under a realistic SOP prompt on the simulated model ``sim-large``.

(a) ``in_process``: replay through the real ``openai`` SDK and the simulated model's
    in-process transport, in samples/s, next to the bare SDK's calls/s (sequential
    ``chat.completions.create``) against a transport that returns one constant reply,
    measured in the same run, interleaved; target ratio >= 0.7. Also: replay plus scoring
    with the checkpoint's eval (embedding similarity), and one replay with
    ``messages_in_extra_body=False`` (the SDK's own transform of the message list paid, as
    the bare SDK pays it).
(b) ``serve_sim``: replay against ``selfimprove-rl serve-sim --latency-ms 50`` at concurrency
    32; achieved / ideal throughput (ideal = 32 / 0.05 s = 640 req/s), target >= 0.8. The
    client's CPU time per request is reported, since a loaded machine starves the client.
(c) ``cached``: the same replay again: model calls in the second run (target 0) and its
    samples/s (target >= 20,000), from memory and from a fresh process's view of the
    SQLite cache.

Each throughput runs ``--trials`` times; the figure used for a target is the best trial
(as ``timeit`` does: other processes only ever slow a trial down), and the median is
reported beside it. Run: ``.venv/bin/python benchmarks/bench_replay.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from selfimprove_rl.cache import ResponseCache
from selfimprove_rl.checkpoint import Action, Checkpoint, Sample
from selfimprove_rl.evals import build_evaluators, score_outcomes
from selfimprove_rl.mimic import load_dataset
from selfimprove_rl.replay import ReplayConfig, Replayer, ReplayReport, build_messages
from selfimprove_rl.simulated.server import running_server
from selfimprove_rl.simulated.transport import make_async_client

MODEL = "sim-large"
SOP_PROMPT = """You are Bea, the chat assistant of a small neighbourhood cafe. Keep replies short.

## SOP
1. If input mentions coffee, espresso, latte, cappuccino, "flat white", barista or beans: \
respond "I see you are a person of taste! I like coffee, too."; terminate
2. If input is about sports, exercise, training, a match, a race or a game: respond \
"Well, I don't like sports."
3. example: "My morning brew keeps me going." -> "I see you are a person of taste! \
I like coffee, too."
4. example: "We won the final in extra time!" -> "Well, I don't like sports."
5. Never promise discounts.
6. else: respond "Well, I don't like sports."
"""
TARGETS = {
    "in_process_ratio": 0.7,
    "serve_sim_ratio": 0.8,
    "cached_model_calls": 0,
    "cached_samples_per_s": 20_000,
}


_STARTED = time.perf_counter()


def log(message: str) -> None:
    print(
        f"[bench_replay {time.perf_counter() - _STARTED:6.1f}s] {message}",
        file=sys.stderr,
        flush=True,
    )


def build_workload(checkpoint: Checkpoint) -> list[Sample]:
    """Each message alone, and as the third turn of three two-exchange conversations."""
    samples = checkpoint.samples
    workload = list(samples)
    for shift in (37, 71, 113):
        for index, sample in enumerate(samples):
            earlier = samples[(index + shift) % len(samples)]
            history = [
                *earlier.chat_history,
                {"role": "assistant", "content": earlier.output_text},
                *sample.chat_history,
            ]
            workload.append(
                sample.model_copy(
                    update={
                        "sample_id": f"{sample.sample_id}-after-{shift}",
                        "chat_history": history,
                    }
                )
            )
    return workload


def variant(action: Action, tag: str) -> Action:
    """The same prompt with one inert line added, so no request is answered from a cache."""
    return action.model_copy(update={"system_prompt": f"{action.system_prompt}\nRun {tag}."})


def constant_client() -> openai.AsyncOpenAI:
    """The SDK against a transport that answers every request with one constant completion."""
    body = json.dumps(
        {
            "id": "chatcmpl-constant",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Well, I don't like sports."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 150, "completion_tokens": 7, "total_tokens": 157},
        }
    ).encode()
    headers = {"content-type": "application/json"}

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers=headers)

    return openai.AsyncOpenAI(
        api_key="sk-constant",
        base_url="http://constant.invalid/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(reply)),
    )


async def bare_sdk_rate(
    client: openai.AsyncOpenAI, workload: list[Sample], action: Action
) -> float:
    requests = [build_messages(sample, action) for sample in workload]
    started = time.perf_counter()
    for messages in requests:
        await client.chat.completions.create(model=MODEL, messages=messages, temperature=0.0)  # type: ignore[arg-type]
    return len(requests) / (time.perf_counter() - started)


async def timed_replay(
    replayer: Replayer, workload: list[Sample], action: Action
) -> tuple[float, float, ReplayReport]:
    """Samples/s, client CPU ms per request sent, and the report of one replay."""
    cpu, started = time.process_time(), time.perf_counter()
    report = await replayer.replay(workload, action)
    elapsed = time.perf_counter() - started
    cpu_ms = (time.process_time() - cpu) * 1000 / max(1, report.usage.calls)
    return len(workload) / elapsed, cpu_ms, report


def summary(values: list[float]) -> dict[str, float]:
    return {"best": round(max(values), 1), "median": round(statistics.median(values), 1)}


async def bench_in_process(
    checkpoint: Checkpoint, workload: list[Sample], action: Action, trials: int
) -> dict[str, Any]:
    replayer = Replayer(make_async_client())
    bare = constant_client()
    evaluators = build_evaluators(
        checkpoint.eval_constants, judge_llm_kwargs=None, target_model=MODEL
    )
    log("in-process warm-up (loads the embedding model and caches input embeddings)")
    warm = await replayer.replay(workload, variant(action, "warm-up"))
    await score_outcomes(evaluators, workload, warm.outcomes)
    await bare_sdk_rate(bare, workload[:100], action)
    typed = Replayer(make_async_client(), config=ReplayConfig(messages_in_extra_body=False))
    typed_rate, _, _ = await timed_replay(typed, workload, variant(action, "typed"))
    replay_rates, bare_rates, scored_rates = [], [], []
    for trial in range(trials):
        rate, _, report = await timed_replay(replayer, workload, variant(action, f"a{trial}"))
        assert report.usage.calls == len(workload), "every request of a trial is new"
        replay_rates.append(rate)
        bare_rates.append(await bare_sdk_rate(bare, workload, action))
        started = time.perf_counter()
        report = await replayer.replay(workload, variant(action, f"s{trial}"))
        await score_outcomes(evaluators, workload, report.outcomes)
        scored_rates.append(len(workload) / (time.perf_counter() - started))
        log(f"in-process trial {trial}: replay {rate:.0f}/s, bare SDK {bare_rates[-1]:.0f}/s")
    return {
        "replay_samples_per_s": summary(replay_rates),
        "bare_sdk_calls_per_s": summary(bare_rates),
        "ratio": round(max(replay_rates) / max(bare_rates), 3),
        "ratio_median": round(statistics.median(replay_rates) / statistics.median(bare_rates), 3),
        "replay_and_score_samples_per_s": summary(scored_rates),
        "replay_with_sdk_typed_messages_samples_per_s": round(typed_rate, 1),
        "evaluators": [evaluator.name for evaluator in evaluators],
        "failures": warm.usage.failures,
        "matches_logged_output": sum(
            o.text == s.output_text for o, s in zip(warm.outcomes, workload, strict=True)
        ),
    }


async def bench_serve_sim(
    url: str,
    workload: list[Sample],
    action: Action,
    trials: int,
    latency_ms: float,
    concurrency: int,
) -> dict[str, Any]:
    client = openai.AsyncOpenAI(base_url=url, api_key="sk-serve-sim", max_retries=0)
    replayer = Replayer(client, config=ReplayConfig(concurrency=concurrency))
    log("serve-sim warm-up")
    await replayer.replay(workload, variant(action, "warm-up"))
    rates, cpu_ms, failures = [], [], 0
    for trial in range(trials):
        rate, cpu, report = await timed_replay(replayer, workload, variant(action, f"b{trial}"))
        rates.append(rate)
        cpu_ms.append(cpu)
        failures += report.usage.failures
        log(f"serve-sim trial {trial}: {rate:.0f} req/s, client CPU {cpu:.2f} ms/request")
    ideal = concurrency / (latency_ms / 1000.0)
    await client.close()
    return {
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "requests_per_trial": len(workload),
        "achieved_req_per_s": summary(rates),
        "ideal_req_per_s": ideal,
        "ratio": round(max(rates) / ideal, 3),
        "ratio_median": round(statistics.median(rates) / ideal, 3),
        "client_cpu_ms_per_request": round(statistics.median(cpu_ms), 3),
        "failures": failures,
    }


async def bench_cached(workload: list[Sample], action: Action, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "responses.sqlite"
        cache = ResponseCache(path)
        replayer = Replayer(make_async_client(), cache=cache)
        first = await replayer.replay(workload, action)
        rates: list[float] = []
        calls: list[int] = []
        for _ in range(repeats):
            rate, _, report = await timed_replay(replayer, workload, action)
            rates.append(rate)
            calls.append(report.usage.calls)
        cache.close()

        async def from_disk() -> tuple[float, int]:
            fresh = Replayer(make_async_client(), cache=ResponseCache(path))
            rate, _, report = await timed_replay(fresh, workload, action)
            fresh.cache.close()
            return rate, report.usage.calls

        disk = [await from_disk() for _ in range(max(3, repeats // 4))]
    return {
        "first_run_model_calls": first.usage.calls,
        "second_run_model_calls": calls[0],
        "max_model_calls_over_repeats": max(calls),
        "samples_per_s": summary(rates),
        "repeats": repeats,
        "from_disk_new_instance_samples_per_s": summary([rate for rate, _ in disk]),
        "from_disk_model_calls": max(n for _, n in disk),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=3, help="Trials per throughput figure.")
    parser.add_argument("--cached-repeats", type=int, default=20, help="Cached replays timed.")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="serve-sim latency.")
    parser.add_argument("--concurrency", type=int, default=32, help="Replay concurrency for (b).")
    args = parser.parse_args(argv)

    checkpoint = load_dataset("coffee_sports", model=MODEL, system_prompt=SOP_PROMPT)
    workload = build_workload(checkpoint)
    action = checkpoint.action
    started = time.perf_counter()
    in_process = asyncio.run(bench_in_process(checkpoint, workload, action, args.trials))
    log("starting serve-sim")
    with running_server(latency_ms=args.latency_ms) as url:
        serve_sim = asyncio.run(
            bench_serve_sim(url, workload, action, args.trials, args.latency_ms, args.concurrency)
        )
    cached = asyncio.run(bench_cached(workload, variant(action, "cached"), args.cached_repeats))
    result = {
        "benchmark": "replay",
        "backend": f"simulated model {MODEL!r} (in process, and serve-sim over HTTP)",
        "workload": {
            "data": "coffee_sports (shipped mimic data set)",
            "samples": len(checkpoint.samples),
            "conversations": len(workload),
            "system_prompt_chars": len(action.system_prompt),
        },
        "in_process": in_process,
        "serve_sim": serve_sim,
        "cached": cached,
        "targets": TARGETS,
        "meets_targets": {
            "in_process_ratio": in_process["ratio"] >= TARGETS["in_process_ratio"],
            "serve_sim_ratio": serve_sim["ratio"] >= TARGETS["serve_sim_ratio"],
            "cached_model_calls": cached["second_run_model_calls"] == 0,
            "cached_samples_per_s": cached["samples_per_s"]["best"]
            >= TARGETS["cached_samples_per_s"],
        },
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "trials": args.trials,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
