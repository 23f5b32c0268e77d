#!/usr/bin/env python
"""The MiniGPT-4 chat demo (Gradio): upload an image, start the chat, ask; answers stream in.

    python demo.py --cfg-path eval_configs/minigpt4_eval.yaml --gpu-id 0           # GPU, 8-bit Vicuna
    python demo.py --cfg-path eval_configs/minigpt4_tiny_eval.yaml --device cpu    # tiny random model

Listens on 127.0.0.1:7860 unless ``--host``/``--port`` say otherwise; a public link only with
``--share``. Each browser session has its own conversation; generations run one at a time (queued).
"""

from __future__ import annotations

import argparse
import functools
import html
import logging
import queue
import sys
import tempfile
import threading
from pathlib import Path

import torch

try:
    import gradio as gr
except ImportError as err:  # an optional extra
    raise ImportError("demo.py needs Gradio 6: pip install -e '.[demo]'") from err
from transformers.generation.streamers import BaseStreamer

from minigpt4.conversation.conversation import CONV_VISION, Chat, clean_answer

logger = logging.getLogger("demo")

ROOT = Path(__file__).resolve().parent
TITLE = '<h1 align="center">Demo of MiniGPT-4</h1>'
DESCRIPTION = "<h3>This is the demo of MiniGPT-4. Upload your images and start chatting!</h3>"
ARTICLE = (
    "[Project page](https://minigpt-4.github.io) · [GitHub](https://github.com/Vision-CAIR/MiniGPT-4) · "
    "[Paper](https://raw.githubusercontent.com/Vision-CAIR/MiniGPT-4/main/MiniGPT_4.pdf)"
)
IMAGE_MESSAGE = "<Img><ImageHere></Img>"
NO_IMAGE_PLACEHOLDER = "Please upload your image first"
CHAT_PLACEHOLDER = "Type and press Enter"
NOT_STARTED = "Upload an image and click 'Upload & Start Chat' first."
MAX_UPLOAD = "25mb"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="MiniGPT-4 Gradio demo")
    p.add_argument("--cfg-path", required=True, help="path to configuration file.")
    p.add_argument("--gpu-id", type=int, default=0, help="specify the gpu to load the model.")
    p.add_argument("--options", nargs="+",
                   help="override some settings in the used config, the key-value pair in xxx=yyy format will be "
                        "merged into config file.")
    p.add_argument("--device", help="cpu or cuda:N (default: cuda:<gpu-id> when CUDA is available, else cpu)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for the local network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    p.add_argument("--prompts", default=str(ROOT / "prompts" / "alignment.txt"),
                   help="the humour prompts shown as one-click buttons, one per line")
    p.add_argument("--examples", default=str(ROOT / "examples" / "image"), help="folder of example images")
    p.add_argument("--seed", type=int, default=42, help="random seed (sampling); the original never seeded")
    return p.parse_args(argv)


def resolve_device(args) -> str:
    if args.device:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"error: --device {args.device} but CUDA is not available; use --device cpu.")
        return str(device)
    if torch.cuda.is_available():
        return f"cuda:{args.gpu_id}"
    logger.warning("CUDA is not available: running on the CPU (slow with the real model).")
    return "cpu"


def read_prompts(path) -> list[str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        logger.warning("No prompt file at %s: no prompt buttons.", path)
        return []
    prompts = []
    for line in lines:
        line = line.strip()
        if line.startswith(IMAGE_MESSAGE):
            line = line[len(IMAGE_MESSAGE):].strip()
        if line:
            prompts.append(line)
    return prompts


def example_images(folder) -> list[str]:
    """The bundled examples, or (without them) a few scikit-image samples written to a temporary folder."""
    folder = Path(folder)
    images = sorted(str(p) for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if images:
        return images[:12]
    try:
        import skimage.data
        from PIL import Image
    except ImportError:
        return []
    out = Path(tempfile.mkdtemp(prefix="minigpt4-demo-examples-"))
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skimage.data, name)()).convert("RGB").save(out / f"{name}.jpg")
    return sorted(str(p) for p in out.glob("*.jpg"))


class _IdStreamer(BaseStreamer):
    """Hands each new token id to a queue; ``None`` marks the end."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()

    def put(self, value):
        # The first call carries the prompt ids, empty when generating from embeddings.
        for token in value.reshape(-1).tolist():
            self.queue.put(token)

    def end(self):
        self.queue.put(None)


def _readable(fn):
    """Run a callback so that any failure reaches the user as a short message, never a traceback."""

    def report(err):
        if isinstance(err, gr.Error):
            raise err
        if isinstance(err, (ValueError, TypeError)):
            raise gr.Error(str(err)) from None
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise gr.Error("The GPU ran out of memory: lower 'max new tokens' or the beam count, or restart.") from None
        logger.exception("Unexpected error in %s", fn.__name__)
        raise gr.Error(f"Something went wrong ({type(err).__name__}: {err}). Try again or restart.") from None

    if getattr(fn, "__code__", None) and fn.__code__.co_flags & 0x20:  # a generator: stream its updates
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:  # noqa: BLE001  (reported to the user, logged here)
                report(err)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            report(err)
    return wrapper


class DemoApp:
    """The callbacks; all per-user state travels in ``gr.State`` (conversation, image embeddings)."""

    def __init__(self, chat: Chat, model_info: dict):
        self.chat = chat
        self.model_info = model_info

    # -- upload / restart ------------------------------------------------------------------------------
    def upload_img(self, image_payload):
        """``image_payload`` is the raw upload (not preprocessed by Gradio, so a bad file reaches us)."""
        from minigpt4.generation import open_image

        path = _payload_path(image_payload)
        if path is None:
            raise gr.Error("No image yet: upload an image (or pick an example), then click 'Upload & Start Chat'.")
        image = open_image(path)  # ValueError with a readable reason for a non-image or a huge image
        conv, img_list = CONV_VISION.copy(), []
        self.chat.upload_img(image, conv, img_list)
        return (
            gr.Image(interactive=False),
            gr.Textbox(interactive=True, placeholder=CHAT_PLACEHOLDER),
            gr.Button(value="Start Chatting", interactive=False),
            conv,
            img_list,
        )

    @staticmethod
    def reset(conv, img_list):
        if conv is not None:
            conv.messages = []
        return (
            [],
            gr.Image(value=None, interactive=True),
            gr.Textbox(value="", interactive=False, placeholder=NO_IMAGE_PLACEHOLDER),
            gr.Button(value="Upload & Start Chat", interactive=True),
            None,
            [],
        )

    # -- chat ------------------------------------------------------------------------------------------
    def ask(self, text, chatbot, conv):
        if conv is None:
            raise gr.Error(NOT_STARTED)
        if conv.messages and conv.messages[-1][0] == conv.roles[1] and conv.messages[-1][1] is None:
            raise gr.Error("Still answering the previous message; wait for it to finish.")
        self.chat.ask(text, conv)  # ValueError on an empty message
        chatbot = list(chatbot or []) + [{"role": "user", "content": text}]
        return "", chatbot, conv

    def answer(self, chatbot, conv, img_list, num_beams, temperature, do_sample, max_new_tokens):
        """Stream the reply into the last chatbot message; the final text is ``Chat.answer``'s."""
        if conv is None or not img_list:
            raise gr.Error(NOT_STARTED)
        if not conv.messages or conv.messages[-1][0] != conv.roles[0]:
            return  # nothing asked (the question was refused)
        chatbot = list(chatbot or []) + [{"role": "assistant", "content": ""}]
        num_beams, max_new_tokens = int(num_beams), int(max_new_tokens)
        streamer = _IdStreamer() if num_beams == 1 else None  # transformers cannot stream beam search
        result: dict = {}

        def work():
            try:
                result["text"], _ = self.chat.answer(
                    conv, img_list, max_new_tokens=max_new_tokens, num_beams=num_beams,
                    temperature=float(temperature), do_sample=bool(do_sample), max_length=2000, streamer=streamer)
            except Exception as err:  # noqa: BLE001  (re-raised in the request thread)
                result["error"] = err
                if streamer is not None:
                    streamer.end()

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        if streamer is not None:
            ids: list[int] = []
            while (token := streamer.queue.get()) is not None:
                ids.append(token)
                partial = clean_answer(self.chat.model.decode_ids(torch.tensor(ids)))
                chatbot[-1] = {"role": "assistant", "content": partial}
                yield chatbot, conv, img_list
        thread.join()
        if "error" in result:
            if conv.messages and conv.messages[-1][1] is None:
                conv.messages.pop()  # the unanswered assistant turn; the question stays
            raise result["error"]
        chatbot[-1] = {"role": "assistant", "content": result["text"]}
        yield chatbot, conv, img_list


def _payload_path(payload):
    if payload is None:
        return None
    if isinstance(payload, (str, Path)):
        return str(payload)
    if isinstance(payload, dict):
        return payload.get("path")
    return getattr(payload, "path", None)


def short_path(value):
    """A path as a person reads it: relative to the working directory when inside it, ``~`` for home."""
    if not value:
        return value
    path = Path(str(value))
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            return prefix + str(path.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return str(value)


def model_markdown(info: dict) -> str:
    rows = [("Config", short_path(info.get("cfg_path"))), ("Model", f"{info.get('arch')} / {info.get('model_type')}"),
            ("LLM", short_path(info.get("llama_model"))), ("Checkpoint", short_path(info.get("ckpt"))),
            ("Device", info.get("device") + (" (LLM in 8-bit)" if info.get("low_resource") else ""))]
    return "**Active model** — " + " · ".join(f"{k}: `{html.escape(str(v))}`" for k, v in rows if v)


def build_demo(chat: Chat, model_info: dict, prompts=(), examples=()) -> gr.Blocks:
    app = DemoApp(chat, model_info)
    with gr.Blocks(title="MiniGPT-4", analytics_enabled=False) as demo:
        gr.Markdown(TITLE)
        gr.Markdown(DESCRIPTION)
        gr.Markdown(ARTICLE)
        gr.Markdown(model_markdown(model_info), elem_id="model-info")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(type="filepath", sources=["upload", "clipboard"], elem_id="image")
                upload_button = gr.Button(value="Upload & Start Chat", interactive=True, variant="primary",
                                          elem_id="upload-button")
                clear = gr.Button("Restart", elem_id="restart-button")
                num_beams = gr.Slider(1, 10, value=1, step=1, interactive=True, label="beam search numbers")
                temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, interactive=True, label="Temperature")
                do_sample = gr.Checkbox(value=True, label="Sampling (off: greedy or beam search)")
                max_new_tokens = gr.Slider(1, 1000, value=300, step=1, interactive=True, label="Max new tokens")
            with gr.Column(scale=2):
                chat_state = gr.State(None)
                img_list = gr.State([])
                chatbot = gr.Chatbot(label="MiniGPT-4", elem_id="chatbot")
                text_input = gr.Textbox(label="User", placeholder=NO_IMAGE_PLACEHOLDER, interactive=False,
                                        elem_id="user-input")
                prompt_buttons = []
                if prompts:
                    gr.Markdown("One-click humour prompts:")
                    with gr.Row():
                        for i, prompt in enumerate(prompts):
                            prompt_buttons.append(gr.Button(prompt, size="sm", elem_id=f"prompt-{i}"))
        if examples:
            gr.Examples(examples=[[path] for path in examples], inputs=[image], label="Example images")

        answer_inputs = [chatbot, chat_state, img_list, num_beams, temperature, do_sample, max_new_tokens]
        answer_outputs = [chatbot, chat_state, img_list]
        upload_button.click(
            _readable(app.upload_img), [image], [image, text_input, upload_button, chat_state, img_list],
            preprocess=False, api_name="upload", concurrency_id="model")
        text_input.submit(
            _readable(app.ask), [text_input, chatbot, chat_state], [text_input, chatbot, chat_state], api_name="ask",
        ).success(_readable(app.answer), answer_inputs, answer_outputs, api_name="answer", concurrency_id="model")
        for button in prompt_buttons:
            button.click(
                _readable(app.ask), [button, chatbot, chat_state], [text_input, chatbot, chat_state], api_name=False,
            ).success(_readable(app.answer), answer_inputs, answer_outputs, api_name=False, concurrency_id="model")
        clear.click(app.reset, [chat_state, img_list],
                    [chatbot, image, text_input, upload_button, chat_state, img_list], queue=False, api_name="reset")
    # One image encoding or generation at a time on the shared model (every such event shares the
    # concurrency id "model"); other users wait in the queue.
    demo.queue(default_concurrency_limit=1)
    return demo


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from minigpt4.generation import load_for_inference

    device = resolve_device(args)
    torch.manual_seed(args.seed)
    logger.info("Initializing Chat")
    model, vis_processor, info = load_for_inference(args.cfg_path, args.options, device=device, gpu_id=args.gpu_id)
    chat = Chat(model, vis_processor, device=device)
    logger.info("Initialization Finished")
    examples = example_images(args.examples)
    demo = build_demo(chat, info, read_prompts(args.prompts), examples)
    allowed = sorted({str(Path(p).parent) for p in examples})
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                max_file_size=MAX_UPLOAD, allowed_paths=allowed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
