"""The `extract` pipeline: a folder of documents becomes chunked JSONL training data.

    discover files -> parse in killable worker processes -> finish each document (running
    headers, cleaning, chunking) -> cache its records -> assemble the outputs in a fixed order

Workers only parse (the slow part: PDF text extraction). The parent finishes each document as
soon as its last piece arrives and streams its records to a per-document cache file, so memory
does not grow with the corpus. The outputs are assembled from those cache files in sorted source
order at the end, which makes the result independent of worker timing, lets `--incremental`
reuse the records of unchanged files, and lets every output be written to a temporary file that
is renamed only on success.

    run.py         `ExtractRun`: the run from start to end; finishing and caching a document
    discovery.py   the input files a run reads, and those it refuses with the reason
    pdf_ranges.py  a large PDF as page ranges in parallel workers, assembled when all are in
    outputs.py     train/valid, alpaca/ and chat/ files (or .txt files) from the cached records
    manifest.py    the cache folder and its manifest: what `--incremental` may reuse
    reports.py     the report entry of each file; progress.py: the progress bar
"""

from document_processing.pipeline.reports import ExtractResult, FileReport
from document_processing.pipeline.run import ExtractRun

__all__ = ["ExtractResult", "ExtractRun", "FileReport"]
