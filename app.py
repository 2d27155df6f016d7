"""Hugging Face Spaces entry point (``python app.py``): the t5vae demo page for the run directory named by
$T5VAE_RUN (default ``t5vae-run``), on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT (Spaces: 0.0.0.0:7860).
$T5VAE_CORPUS overrides the corpus the map and the nearest lines come from."""

import os

from t5vae import demo


def main(env=os.environ) -> None:
    page, _ = demo.serve(
        env.get("T5VAE_RUN", "t5vae-run"),
        env.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        int(env.get("GRADIO_SERVER_PORT", "7860")),
        corpus=env.get("T5VAE_CORPUS") or None,
    )
    page.block_thread()


if __name__ == "__main__":
    main()
