"""LLM-judge win rate against a local OpenAI-compatible server that plays a deterministic judge."""

from __future__ import annotations

import json
import re
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from conftest import lora_model

from rose.config import JudgeConfig
from rose.errors import ConfigError
from rose.judge import generate_answers, judge_pair, make_client, question_text, win_rate

KEY_ENV = "ROSE_TEST_JUDGE_KEY"
ANSWERS = re.compile(r"\[Answer A\]\n(.*)\n\n\[Answer B\]\n(.*)\n\n\[Verdict", re.DOTALL)


def prefers_correct(a: str, b: str) -> str:
    """The answer that says "correct" wins; both or neither is a tie."""
    a_ok, b_ok = (bool(re.search(r"\bcorrect\b", t)) for t in (a, b))
    return "A" if a_ok and not b_ok else "B" if b_ok and not a_ok else "tie"


class FakeJudge:
    """`POST /v1/chat/completions` in OpenAI's response format; replies `reply(answer_a, answer_b)`."""

    def __init__(self) -> None:
        self.reply: Callable[[str, str], str] = prefers_correct
        self.requests: list[dict] = []  # body, plus the parsed answers and the auth header
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if self.path != "/v1/chat/completions":
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                a, b = ANSWERS.search(body["messages"][-1]["content"]).groups()
                judge.requests.append({**body, "answers": (a, b), "auth": self.headers["Authorization"]})
                payload = json.dumps({
                    "id": f"chatcmpl-{len(judge.requests)}", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": judge.reply(a, b)}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server():
    judge = FakeJudge()
    yield judge
    judge.server.shutdown()
    judge.server.server_close()


@pytest.fixture
def judge(server, monkeypatch):
    pytest.importorskip("openai", reason="the judge client needs the optional openai package")
    server.reply, server.requests[:] = prefers_correct, []
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return server


@pytest.fixture
def client(judge):
    return make_client(JudgeConfig(base_url=judge.url, api_key_env=KEY_ENV))


GOOD, BAD, BOTH = "The correct answer is 4.", "It is 5, I think.", "A correct answer, also correct."


def test_better_candidate_wins_both_positions_and_every_item_is_judged_swapped(judge, client):
    items = [(f"Human: question {i}", GOOD + f" ({i})", BAD + f" ({i})") for i in range(3)]
    res = win_rate(client, "judge-model", items)
    assert (res.win_rate, res.wins, res.losses, res.ties, res.n) == (1.0, 3.0, 0.0, 0.0, 3)
    assert len(judge.requests) == 6
    for i, (question, candidate, golden) in enumerate(items):
        first, second = judge.requests[2 * i : 2 * i + 2]
        assert first["answers"] == (candidate, golden) and second["answers"] == (golden, candidate)
        assert question in first["messages"][-1]["content"]
    assert all(r["model"] == "judge-model" and r["temperature"] == 0 and r["auth"] == "Bearer sk-test" for r in judge.requests)


def test_worse_candidate_loses(judge, client):
    res = win_rate(client, "m", [("q1", BAD, GOOD), ("q2", BAD, GOOD)])
    assert (res.win_rate, res.wins, res.losses, res.ties, res.n) == (0.0, 0.0, 2.0, 0.0, 2)


def test_position_bias_cancels_out_after_swapping(judge, client):
    judge.reply = lambda a, b: "A"
    res = win_rate(client, "m", [("q1", GOOD, BAD), ("q2", BAD, GOOD), ("q3", BOTH, BOTH)])
    assert (res.win_rate, res.wins, res.losses, res.ties, res.n) == (0.5, 0.0, 0.0, 3.0, 3)


def test_mixed_items_give_the_exact_mean(judge, client):
    items = [("q1", GOOD, BAD), ("q2", GOOD, BAD), ("q3", BAD, GOOD), ("q4", BOTH, GOOD), ("q5", BAD, BAD)]
    res = win_rate(client, "m", items)
    assert res.win_rate == pytest.approx((1 + 1 + 0 + 0.5 + 0.5) / 5)
    assert (res.wins, res.losses, res.ties, res.n) == (2.0, 1.0, 2.0, 5)


def test_replies_are_parsed_leniently_but_garbage_is_an_error(judge, client):
    for reply, verdict in (("  **b**. Because it is shorter.", "B"), ("Tie.", "tie"), ("a", "A"), ('"A"', "A")):
        judge.reply = lambda a, b, reply=reply: reply
        assert judge_pair(client, "m", "q", GOOD, BAD) == verdict
    judge.reply = lambda a, b: "Both answers have merit."
    with pytest.raises(RuntimeError, match="Both answers have merit"):
        win_rate(client, "m", [("q", GOOD, BAD)])
    judge.reply = lambda a, b: ""
    with pytest.raises(RuntimeError, match="replied ''"):
        judge_pair(client, "m", "q", GOOD, BAD)


def test_missing_api_key_is_a_config_error_naming_the_variable(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ConfigError, match=KEY_ENV):
        make_client(JudgeConfig(api_key_env=KEY_ENV))
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(ConfigError, match=KEY_ENV):
        make_client(JudgeConfig(api_key_env=KEY_ENV))


def test_missing_openai_package_is_a_config_error(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    monkeypatch.setitem(sys.modules, "openai", None)  # makes `import openai` fail
    with pytest.raises(ConfigError, match="pip install openai"):
        make_client(JudgeConfig(api_key_env=KEY_ENV))


def test_endpoint_falls_back_to_the_environment(judge, monkeypatch):
    monkeypatch.setenv("ROSE_JUDGE_BASE_URL", judge.url)
    client = make_client(JudgeConfig(api_key_env=KEY_ENV))
    assert judge_pair(client, "m", "q", BAD, GOOD) == "B" and len(judge.requests) == 1


def test_question_text_renders_a_transcript():
    prompt = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"})
    assert question_text(prompt) == "System: Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: 2+2?"


def test_batched_greedy_answers_equal_one_prompt_at_a_time(tokenizer):
    model = lora_model(r=2)
    prompts = [({"role": "user", "content": "Hi"},),
               ({"role": "user", "content": "Name three colours of the rainbow and say which one you like best."},)]
    cpu = torch.device("cpu")
    batched = generate_answers(model, tokenizer, prompts, max_new_tokens=8, device=cpu, batch_size=2)
    alone = [generate_answers(model, tokenizer, [p], max_new_tokens=8, device=cpu)[0] for p in prompts]
    assert all(batched) and batched == alone
    assert tokenizer.padding_side == "right"
