"""Every op as the layers call it: a forward/backward pair that goes through the dispatch.

``ops.softmax_forward(x, axis=-1)`` takes exactly the arguments of
:func:`nptransformer.functional.softmax_forward` and gives the same result;
it runs the fastest kernel that applies (:mod:`.dispatch`) or the reference.
``ops.softmax_backward(dout, ctx)`` then runs the backward of whichever ran.
The layers in :mod:`nptransformer.nn` call these; a learner reads the
reference in :mod:`nptransformer.functional`.

>>> import numpy as np
>>> y, ctx = linear_forward(np.ones((2, 3)), np.ones((4, 3)))
>>> dx, dweight, dbias = linear_backward(np.ones((2, 4)), ctx)
>>> y[0].tolist(), dx[0].tolist(), dbias
([3.0, 3.0, 3.0, 3.0], [4.0, 4.0, 4.0], None)
"""

from __future__ import annotations

from typing import Any, Callable

from . import dispatch


def _pair(op: str) -> tuple[Callable[..., Any], Callable[[Any, Any], Any]]:
    def forward(*args: Any, **kwargs: Any) -> tuple[Any, Any]:
        return dispatch.forward(op, *args, **kwargs)

    def backward(dout: Any, ctx: Any) -> Any:
        return dispatch.backward(dout, ctx)

    forward.__name__, backward.__name__ = f"{op}_forward", f"{op}_backward"
    forward.__doc__ = f"``functional.{op}_forward``'s arguments and result, through the dispatch."
    backward.__doc__ = f"``functional.{op}_backward``'s result, by whichever implementation ran the forward."
    return forward, backward


linear_forward, linear_backward = _pair("linear")
matmul_forward, matmul_backward = _pair("matmul")
add_forward, add_backward = _pair("add")
relu_forward, relu_backward = _pair("relu")
gelu_forward, gelu_backward = _pair("gelu")
tanh_forward, tanh_backward = _pair("tanh")
linear_activation_forward, linear_activation_backward = _pair("linear_activation")
softmax_forward, softmax_backward = _pair("softmax")
log_softmax_forward, log_softmax_backward = _pair("log_softmax")
layer_norm_forward, layer_norm_backward = _pair("layer_norm")
rms_norm_forward, rms_norm_backward = _pair("rms_norm")
batch_norm_forward, batch_norm_backward = _pair("batch_norm")
dropout_forward, dropout_backward = _pair("dropout")
embedding_forward, embedding_backward = _pair("embedding")
scaled_dot_product_attention_forward, scaled_dot_product_attention_backward = _pair("scaled_dot_product_attention")
cross_entropy_forward, cross_entropy_backward = _pair("cross_entropy")
sinusoidal_forward, sinusoidal_backward = _pair("sinusoidal")
rope_forward, rope_backward = _pair("rope")
lstm_cell_forward, lstm_cell_backward = _pair("lstm_cell")
gru_cell_forward, gru_cell_backward = _pair("gru_cell")
copy_to_group_forward, copy_to_group_backward = _pair("copy_to_group")
reduce_from_group_forward, reduce_from_group_backward = _pair("reduce_from_group")
relative_position_bias_forward, relative_position_bias_backward = _pair("relative_position_bias")
fake_quantize_forward, fake_quantize_backward = _pair("fake_quantize")
distillation_forward, distillation_backward = _pair("distillation")
sliding_window_attention_forward, sliding_window_attention_backward = _pair("sliding_window_attention")
linear_attention_forward, linear_attention_backward = _pair("linear_attention")
