"""The MiniGPT-4 chat demo (Gradio): upload an image, start the chat, ask; answers stream in: ``demo.py``.

    python demo.py --cfg-path eval_configs/minigpt4_eval.yaml --gpu-id 0           # GPU, 8-bit Vicuna
    python demo.py --cfg-path eval_configs/minigpt4_tiny_eval.yaml --device cpu    # tiny model

Listens on 127.0.0.1:7860 unless ``--host``/``--port`` say otherwise; a public link only with
``--share``. Each browser session has its own conversation; generations run one at a time (queued).
Only UI code lives here: answering is ``Chat`` (``Chat.stream`` streams and stops when the request
is cancelled or its client leaves).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import inspect
import logging
import sys
import tempfile
from pathlib import Path

import torch

try:
    import gradio as gr
except ImportError as err:  # an optional extra
    raise ImportError("demo.py needs Gradio 6: pip install -e '.[demo]'") from err

from minigpt4.cli.errors import add_debug_flag, run_cli
from minigpt4.common.errors import MiniGPT4Error
from minigpt4.common.logger import console_logging
from minigpt4.common.paths import PROJECT_ROOT
from minigpt4.constants import IMAGE_MESSAGE
from minigpt4.conversation.conversation import CONV_VISION, Chat
from minigpt4.inference.inputs import open_image, read_prompt_file
from minigpt4.inference.loading import add_speed_flags, load_for_inference, resolve_device, speed_options

logger = logging.getLogger("demo")

TITLE = '<h1 align="center">Demo of MiniGPT-4</h1>'
DESCRIPTION = "<h3>This is the demo of MiniGPT-4. Upload your images and start chatting!</h3>"
ARTICLE = (
    "[Project page](https://minigpt-4.github.io) · [GitHub](https://github.com/Vision-CAIR/MiniGPT-4) · "
    "[Paper](https://raw.githubusercontent.com/Vision-CAIR/MiniGPT-4/main/MiniGPT_4.pdf)"
)
NO_IMAGE_PLACEHOLDER = "Please upload your image first"
CHAT_PLACEHOLDER = "Type and press Enter"
NOT_STARTED = "Upload an image and click 'Upload & Start Chat' first."
MAX_UPLOAD = "25mb"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="demo.py", description="MiniGPT-4 Gradio demo")
    p.add_argument("--cfg-path", required=True, help="path to configuration file.")
    p.add_argument("--gpu-id", type=int, default=0, help="specify the gpu to load the model.")
    p.add_argument("--options", nargs="+",
                   help="override some settings in the used config, the key-value pair in xxx=yyy format will be "
                        "merged into config file.")
    p.add_argument("--device", help="cpu or cuda:N (default: cuda:<gpu-id> when CUDA is available, else cpu)")
    add_speed_flags(p)  # --precision, --compile
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for the local network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link (off by default)")
    p.add_argument("--prompts", default=str(PROJECT_ROOT / "prompts" / "alignment.txt"),
                   help="the humour prompts shown as one-click buttons, one per line")
    p.add_argument("--examples", default=str(PROJECT_ROOT / "examples" / "image"), help="folder of example images")
    p.add_argument("--seed", type=int, default=42, help="random seed (sampling); the original never seeded")
    add_debug_flag(p)
    return p.parse_args(argv)


def read_prompts(path) -> list[str]:
    """The prompt buttons; without a readable prompt file, none (with a warning)."""
    try:
        return read_prompt_file(path)
    except MiniGPT4Error as err:
        logger.warning("%s: no prompt buttons.", err)
        return []


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

    if inspect.isgeneratorfunction(fn):  # a generator: stream its updates
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


def chatbot_messages(conv) -> list[dict]:
    """The conversation as the chat box shows it; a turn still being answered is left out."""
    messages = []
    for role, text in conv.messages if conv is not None else []:
        if role == conv.roles[0]:
            text = text[len(IMAGE_MESSAGE):].strip() if text.startswith(IMAGE_MESSAGE) else text
            if text:
                messages.append({"role": "user", "content": text})
        elif text is None:
            break
        else:
            messages.append({"role": "assistant", "content": text})
    if messages and messages[-1]["role"] == "user":
        messages.pop()  # unanswered
    return messages


class DemoApp:
    """The callbacks; all per-user state travels in ``gr.State`` (conversation, image embeddings)."""

    def __init__(self, chat: Chat, model_info: dict):
        self.chat = chat
        self.model_info = model_info

    def upload_img(self, image_payload):
        """``image_payload`` is the raw upload (not preprocessed by Gradio, so a bad file reaches us)."""
        path = _payload_path(image_payload)
        if path is None:
            raise gr.Error("No image yet: upload an image (or pick an example), then click 'Upload & Start Chat'.")
        image = open_image(path)  # a readable reason for a non-image, a damaged or a huge image
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

    def ask(self, text, chatbot, conv):
        if conv is None:
            raise gr.Error(NOT_STARTED)
        if conv.messages and conv.messages[-1][0] == conv.roles[1] and conv.messages[-1][1] is None:
            raise gr.Error("Still answering the previous message; wait for it to finish (or press Stop).")
        self.chat.ask(text, conv)  # an empty message is refused; an image placeholder becomes plain text
        chatbot = list(chatbot or []) + [{"role": "user", "content": text}]
        return "", chatbot, conv

    def answer(self, chatbot, conv, img_list, num_beams, temperature, do_sample, max_new_tokens):
        """Stream the reply into the last chatbot message; the final text is ``Chat.answer``'s.
        A cancelled request (Stop, a closed tab) or a failure takes the question back."""
        if conv is None or not img_list:
            raise gr.Error(NOT_STARTED)
        if not conv.messages or conv.messages[-1][0] != conv.roles[0] or conv.messages[-1][1] == IMAGE_MESSAGE:
            return  # nothing asked (the question was refused)
        chatbot = list(chatbot or []) + [{"role": "assistant", "content": ""}]
        stream = self.chat.stream(conv, img_list, max_new_tokens=int(max_new_tokens), num_beams=int(num_beams),
                                  temperature=float(temperature), do_sample=bool(do_sample), max_length=2000)
        with contextlib.closing(stream):  # closing this generator closes the stream: generation stops
            for text in stream:
                chatbot[-1] = {"role": "assistant", "content": text}
                yield chatbot, conv, img_list

    @staticmethod
    def stopped(conv):
        """After Stop: the chat box shows the conversation without the turn that was cancelled."""
        return chatbot_messages(conv)


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
            ("Device", info.get("device") + (" (LLM in 8-bit)" if info.get("low_resource") else "")),
            ("Precision", (info.get("precision") or "") + (", compiled decoding" if info.get("compile") else ""))]
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
                with gr.Row():
                    stop = gr.Button("Stop", elem_id="stop-button")
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
        answers = [text_input.submit(
            _readable(app.ask), [text_input, chatbot, chat_state], [text_input, chatbot, chat_state], api_name="ask",
        ).success(_readable(app.answer), answer_inputs, answer_outputs, api_name="answer", concurrency_id="model")]
        for button in prompt_buttons:
            answers.append(button.click(
                _readable(app.ask), [button, chatbot, chat_state], [text_input, chatbot, chat_state], api_name=False,
            ).success(_readable(app.answer), answer_inputs, answer_outputs, api_name=False, concurrency_id="model"))
        stop.click(app.stopped, [chat_state], [chatbot], cancels=answers, queue=False, api_name="stop")
        clear.click(app.reset, [chat_state, img_list],
                    [chatbot, image, text_input, upload_button, chat_state, img_list], queue=False, api_name="reset",
                    cancels=answers)
    # One image encoding or generation at a time on the shared model (every such event shares the
    # concurrency id "model"); other users wait in the queue.
    demo.queue(default_concurrency_limit=1)
    return demo


def main(argv=None) -> int:
    args = parse_args(argv)
    console_logging(logging.INFO, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    device = resolve_device(args.device, args.gpu_id)
    torch.manual_seed(args.seed)
    logger.info("Initializing Chat")
    options = speed_options(args.options, args.precision, args.compile, args.merge_lora)
    model, vis_processor, info = load_for_inference(args.cfg_path, options, device=device)
    chat = Chat(model, vis_processor, device=device)
    warm = chat.warm_up(max_new_tokens=300)
    if warm:
        logger.info("--compile: compiled the decode step in %.1f s (warm-up).", warm)
    logger.info("Initialization Finished")
    examples = example_images(args.examples)
    demo = build_demo(chat, info, read_prompts(args.prompts), examples)
    allowed = sorted({str(Path(p).parent) for p in examples})
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, show_error=False,
                max_file_size=MAX_UPLOAD, allowed_paths=allowed)
    return 0


def cli(argv=None) -> None:
    """The console entry point: user errors are one ``error:`` line and exit code 2."""
    sys.exit(run_cli(main, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    cli()
