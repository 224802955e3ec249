"""Child process: run llama.cpp's convert_hf_to_gguf.py (and its quantizer) on one model.

argv: converter_dir source_dir out_file gguf_type. Prints `HALO_RESULT {json}` last.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import runpy
import sys

CONVERTER_TYPES = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
# every other type by llama.cpp's quantizer, as its LLAMA_FTYPE_MOSTLY_<type> (a quant file names it: conf/quant/)


def _accept_unknown_byte_level_bpe(converter: str) -> list[str]:
    """llama.cpp names BPE pre-tokenizers by a hash of known models' tokens and refuses others. A
    byte-level BPE tokenizer it does not know (like the tiny test model's) converts as `gpt-2`, the
    generic byte-level scheme; verify's tokenizer-parity check then proves or disproves the choice."""
    sys.path[:0] = [converter, os.path.join(converter, "gguf-py")]
    import conversion.base as base  # llama.cpp's package, from the converter dir

    notes: list[str] = []
    recognise = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: object, tokenizer: object) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            notes.append("pre-tokenizer not recognised by llama.cpp: written as gpt-2 (byte-level BPE)")
            return "gpt-2"

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    return notes


def main() -> None:
    converter, source, out_file, gguf_type = sys.argv[1:5]
    logging.basicConfig(level=logging.INFO)
    notes = _accept_unknown_byte_level_bpe(converter)
    intermediate = out_file if gguf_type in CONVERTER_TYPES else out_file + ".f32.gguf"
    sys.argv = ["convert_hf_to_gguf.py", source, "--outfile", intermediate, "--outtype", CONVERTER_TYPES.get(gguf_type, "f32")]
    try:
        runpy.run_path(os.path.join(converter, "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise
    if gguf_type not in CONVERTER_TYPES:
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type}", None)
        if params.ftype is None:
            os.remove(intermediate)
            known = sorted(n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_"))
            sys.exit(f"gguf_type {gguf_type}: llama.cpp's quantizer has no such type; it writes {', '.join(known)}")
        sys.stdout.flush()
        rc = llama_cpp.llama_model_quantize(intermediate.encode(), out_file.encode(), ctypes.byref(params))
        os.remove(intermediate)
        if rc != 0:
            sys.exit(f"llama_model_quantize returned {rc}")
    from halo_pipeline.export.memory import own_peak_rss_mb  # this process's own peak, not the pipeline's

    print("HALO_RESULT " + json.dumps({"notes": notes, "peak_rss_mb": own_peak_rss_mb()}), flush=True)


if __name__ == "__main__":
    main()
