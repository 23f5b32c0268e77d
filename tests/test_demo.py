"""demo.py end to end: a real server with the tiny model on a free localhost port, driven by headless
Chromium (Playwright) and by gradio_client (two concurrent sessions)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import require_chromium

ROOT = Path(__file__).resolve().parents[1]
TINY_CFG = ROOT / "tests" / "fixtures" / "minigpt4_tiny_random_eval.yaml"  # random weights (conftest.TINY_RANDOM_EVAL)
EXAMPLE = ROOT / "examples" / "image" / "coffee.jpg"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def example_image(tmp_path: Path) -> Path:
    if EXAMPLE.is_file():
        return EXAMPLE
    import skimage.data
    from PIL import Image

    path = tmp_path / "coffee.jpg"
    Image.fromarray(skimage.data.coffee()).save(path)
    return path


@pytest.fixture(scope="module")
def demo_url(tiny_dir, tmp_path_factory):
    """``demo.py`` with the tiny config on CPU, listening on 127.0.0.1:<free port>."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("demo") / "demo.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost",
           "no_proxy": "127.0.0.1,localhost"}
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "demo.py"), "--cfg-path", str(TINY_CFG), "--device", "cpu",
             "--port", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo.py exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"demo.py did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        text = log_path.read_text()
        # The server log may hold gradio's own traces of the errors we provoke; none is unexpected.
        assert "Unexpected error" not in text, text[-3000:]


def test_parse_args_defaults_are_local():
    from minigpt4.cli import demo  # importing builds nothing and launches nothing

    args = demo.parse_args(["--cfg-path", str(TINY_CFG)])
    assert args.host == "127.0.0.1" and args.share is False and args.gpu_id == 0 and args.device is None
    assert demo.read_prompts(ROOT / "prompts" / "alignment.txt")[0] == "Describe this image in a funny way."


def test_user_errors_are_one_line(tmp_path, capsys):
    from minigpt4.cli import demo

    for argv, expected in (([], "--cfg-path"),
                           (["--cfg-path", str(tmp_path / "missing.yaml"), "--device", "cpu"], "does not exist"),
                           (["--cfg-path", str(TINY_CFG), "--device", "cuda:99"], "--device"),
                           (["--cfg-path", str(TINY_CFG), "--device", "cpu", "--options", "model.ckpt"],
                            "not key=value")):
        with pytest.raises(SystemExit) as stop:
            demo.cli(argv)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and expected in err.strip().splitlines()[-1] and "Traceback" not in err, err


def _demo_app(tiny_model, stop_words_ids=None):
    from minigpt4.cli.demo import DemoApp
    from minigpt4.conversation.conversation import Chat
    from minigpt4.processors.blip_processors import Blip2ImageEvalProcessor

    chat = Chat(tiny_model, Blip2ImageEvalProcessor(image_size=224), device="cpu", stop_words_ids=stop_words_ids)
    return DemoApp(chat, {})


def _started(app, tmp_path):
    from PIL import Image

    photo = tmp_path / "orange.png"
    Image.new("RGB", (32, 32), "orange").save(photo)
    *_, conv, img_list = app.upload_img(str(photo))
    return conv, img_list


def test_closed_answer_stops_and_writes_nothing(tiny_model, tmp_path, monkeypatch):
    """A cancelled request or a closed tab closes the answer generator: generation stops through a
    stopping criterion, the worker thread is joined, and the session is left as before the question."""
    app = _demo_app(tiny_model, stop_words_ids=[[-1]])  # no stop sequence: 300 tokens unless stopped
    conv, img_list = _started(app, tmp_path)
    before = [list(m) for m in conv.messages]
    calls, forward = [], tiny_model.llama_model.forward
    monkeypatch.setattr(tiny_model.llama_model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    _, chatbot, conv = app.ask("Describe this image in a funny way.", [], conv)
    updates = app.answer(chatbot, conv, img_list, 1, 1.0, False, 300)
    next(updates)
    updates.close()
    stopped_at = len(calls)
    assert not [t for t in threading.enumerate() if t.name == "minigpt4-answer" and t.is_alive()]
    time.sleep(0.5)
    assert len(calls) == stopped_at < 100
    assert conv.messages == before
    assert app.stopped(conv) == []  # what Stop shows: the conversation without the cancelled turn


def test_placeholder_question_and_failed_answer_roll_back(tiny_model, tmp_path, monkeypatch):
    import gradio as gr

    from minigpt4.cli.demo import _readable

    app = _demo_app(tiny_model)
    conv, img_list = _started(app, tmp_path)
    _, chatbot, conv = app.ask("Is <ImageHere> a picture?", [], conv)
    *_, (chatbot, conv, _) = list(app.answer(chatbot, conv, img_list, 1, 1.0, False, 3))
    assert [m["role"] for m in chatbot] == ["user", "assistant"]  # answered, no "Unmatched numbers"
    answered = [list(m) for m in conv.messages]

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(tiny_model.llama_model, "generate", broken)
    _, chatbot2, conv = app.ask("And now?", chatbot, conv)
    with pytest.raises(gr.Error, match="simulated failure"):
        list(_readable(app.answer)(chatbot2, conv, img_list, 1, 1.0, False, 3))
    assert conv.messages == answered  # the failed question is gone: the next one is a single Human turn
    monkeypatch.undo()
    _, chatbot3, conv = app.ask("Once more?", chatbot, conv)
    list(app.answer(chatbot3, conv, img_list, 1, 1.0, False, 3))
    assert [m[0] for m in conv.messages] == ["Human", "Assistant", "Human", "Assistant"]


# Installed in the page: every distinct text of the last bot message, in the order they render.
RECORD_BOT_TEXTS = """() => {
  window.__botTexts = [];
  const root = document.querySelector('#chatbot');
  new MutationObserver(() => {
    const bots = root.querySelectorAll("[data-testid='bot']");
    const text = bots.length ? bots[bots.length - 1].innerText : null;
    const texts = window.__botTexts;
    if (text !== null && texts[texts.length - 1] !== text) texts.push(text);
  }).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def _toasts(page) -> str:
    return "\n".join(page.locator(".toast-body").all_inner_texts())


def _close_toasts(page) -> None:
    for button in page.locator(".toast-close").all():
        try:
            button.click(timeout=1000)
        except Exception:  # noqa: BLE001  (a toast that closed by itself)
            pass


@pytest.mark.slow
def test_browser_chat_flow(demo_url, tmp_path):
    """Acceptance 2: upload, start, humour prompt, streamed answer, restart; errors shown, app keeps serving."""
    chromium = require_chromium()
    from playwright.sync_api import expect, sync_playwright

    not_image = tmp_path / "notes.jpg"  # an image name, text inside: passes the browser, refused by the server
    not_image.write_text("this is not a photo")
    photo = example_image(tmp_path)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(demo_url)
            start = page.get_by_role("button", name="Upload & Start Chat")
            start.wait_for(timeout=60_000)
            expect(page.locator("#model-info")).to_contain_text("tiny")

            # No image yet.
            start.click()
            expect(page.locator(".toast-body")).to_contain_text("No image yet", timeout=30_000)
            _close_toasts(page)

            # A file that is not an image.
            file_input = page.locator("#image input[type=file]")
            file_input.set_input_files(str(not_image))
            expect(page.locator("#image img")).to_have_count(1, timeout=30_000)  # the upload finished
            start.click()
            expect(page.locator(".toast-body")).to_contain_text("not a readable image", timeout=30_000)
            _close_toasts(page)
            page.get_by_role("button", name="Restart").click()
            expect(page.locator("#image img")).to_have_count(0, timeout=30_000)  # the restart finished

            # The app keeps serving: upload a real photo and start.
            page.locator("#image input[type=file]").set_input_files(str(photo))
            expect(page.locator("#image img")).to_have_count(1, timeout=30_000)
            page.get_by_role("button", name="Upload & Start Chat").click()
            textbox = page.locator("#user-input textarea")
            expect(textbox).to_be_enabled(timeout=60_000)
            expect(page.get_by_role("button", name="Start Chatting")).to_be_disabled()

            # An empty message.
            textbox.press("Enter")
            expect(page.locator(".toast-body")).to_contain_text("message is empty", timeout=30_000)
            _close_toasts(page)

            # A one-click humour prompt, greedy: the answer streams into the last bot message, growing over
            # several updates (recorded in the page as they render, however fast they come).
            page.get_by_label("Sampling (off: greedy or beam search)").uncheck()
            page.evaluate(RECORD_BOT_TEXTS)
            page.locator("#prompt-0").click()
            user_msg = page.locator("#chatbot [data-testid='user']").last
            expect(user_msg).to_contain_text("Describe this image in a funny way.", timeout=60_000)
            seen, last_change = [], time.monotonic()
            deadline = last_change + 180
            while time.monotonic() < deadline and time.monotonic() - last_change < 5:
                texts = page.evaluate("window.__botTexts")
                if texts != seen:
                    seen, last_change = texts, time.monotonic()
                time.sleep(0.1)
            assert seen and seen[-1].strip(), "no answer appeared"
            assert len([t for t in seen if t.strip()]) > 1, "the answer arrived in one piece, not streamed"
            assert page.locator("#chatbot [data-testid='bot']").last.inner_text() == seen[-1]
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            if os.environ.get("DEMO_SCREENSHOT"):
                page.screenshot(path=os.environ["DEMO_SCREENSHOT"], full_page=True)
            assert (tmp_path / "demo.png").stat().st_size > 10_000

            # Restart: chat cleared, text box locked until the next upload.
            page.get_by_role("button", name="Restart").click()
            expect(page.locator("#chatbot [data-testid='bot']")).to_have_count(0, timeout=30_000)
            expect(textbox).to_be_disabled()
            expect(page.get_by_role("button", name="Upload & Start Chat")).to_be_enabled()
        finally:
            browser.close()


@pytest.mark.slow
def test_two_sessions_are_separate_and_stream(demo_url, tmp_path):
    """Acceptance 2b: two gradio_client sessions at once never see each other's conversation."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    photo = example_image(tmp_path)
    questions = {"a": "Tell a joke about the cup.", "b": "What would the cup say on a Monday?"}
    results, errors = {}, []

    def session(name: str):
        try:
            client = Client(demo_url, verbose=False)
            client.predict(handle_file(str(photo)), api_name="/upload")
            history = []
            for turn in range(2):
                _, history = client.predict(f"{questions[name]} ({turn})", history, api_name="/ask")
                job = client.submit(history, 1, 1.0, False, 12, api_name="/answer")
                updates = list(job)
                history = job.result()
                results.setdefault(name, []).append(len(updates))
            results[name + "_history"] = history
        except Exception as err:  # noqa: BLE001
            errors.append(f"{name}: {err!r}")

    threads = [threading.Thread(target=session, args=(n,)) for n in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for name, other in (("a", "b"), ("b", "a")):
        history = results[name + "_history"]
        texts = [part["text"] for message in history for part in message["content"]]
        roles = [message["role"] for message in history]
        assert roles == ["user", "assistant", "user", "assistant"]
        assert texts[0] == f"{questions[name]} (0)" and texts[2] == f"{questions[name]} (1)"
        assert not any(questions[other] in text for text in texts)
        assert all(n > 1 for n in results[name]), "the answer was not streamed"

    # A fresh session has no conversation of its own yet: a readable error, not someone else's chat.
    fresh = Client(demo_url, verbose=False)
    with pytest.raises(AppError, match="Upload an image"):
        fresh.predict("hello", [], api_name="/ask")
    with pytest.raises(AppError, match="not a readable image"):
        bad = tmp_path / "bad.png"
        bad.write_bytes(b"\x89PNG but not really")
        fresh.predict(handle_file(str(bad)), api_name="/upload")
