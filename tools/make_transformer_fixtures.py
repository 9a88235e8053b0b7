"""Writes tests/fixtures/torch_transformer_layers.npz from torch.nn.TransformerEncoderLayer and
TransformerDecoderLayer (post-LN and pre-LN), used by tests/kcv/layers/test_transformer.py.

Needs torch (never a kcv dependency). Rerun in a side environment:
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch numpy
    /tmp/torchenv/bin/python tools/make_transformer_fixtures.py
The file stores, per case, torch's state dict (float32), the inputs and torch's outputs in
eval mode (no dropout), with batch_first=True; masks are torch's (True = masked).
"""

import os

import numpy as np
import torch

D, HEADS, FF = 8, 2, 12
OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                   "fixtures", "torch_transformer_layers.npz")


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    arrays = {}
    src = rng.normal(size=(2, 5, D)).astype("float32")
    tgt = rng.normal(size=(2, 4, D)).astype("float32")
    pad = np.array([[False, False, False, True, True], [False] * 5])  # torch: True = padding
    arrays.update(src=src, tgt=tgt, src_padding=pad)
    for norm_first in (False, True):
        tag = "pre" if norm_first else "post"
        enc = torch.nn.TransformerEncoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True,
                                               norm_first=norm_first).eval()
        dec = torch.nn.TransformerDecoderLayer(D, HEADS, FF, dropout=0.0, batch_first=True,
                                               norm_first=norm_first).eval()
        for module in (enc, dec):  # LayerNorms away from 1 / 0 so they are tested too
            for name, p in module.named_parameters():
                if "norm" in name:
                    p.data += 0.3 * torch.randn_like(p)
        with torch.no_grad():
            enc_out = enc(torch.from_numpy(src), src_key_padding_mask=torch.from_numpy(pad))
            causal = torch.nn.Transformer.generate_square_subsequent_mask(4)
            dec_out = dec(torch.from_numpy(tgt), torch.from_numpy(src), tgt_mask=causal,
                          memory_key_padding_mask=torch.from_numpy(pad))
        for prefix, module in (("enc", enc), ("dec", dec)):
            for name, value in module.state_dict().items():
                arrays[f"{tag}/{prefix}/{name}"] = value.numpy()
        arrays[f"{tag}/enc_out"] = enc_out.numpy()
        arrays[f"{tag}/dec_out"] = dec_out.numpy()
    np.savez(OUT, **arrays)
    print(f"wrote {OUT} ({len(arrays)} arrays, torch {torch.__version__})")


if __name__ == "__main__":
    main()
