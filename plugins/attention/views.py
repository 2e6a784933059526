"""attention's dashboard page: the *Attention explorer* — encoder or decoder self-attention of any
layer, one head or all heads, and the entropy and distance of every encoder head."""

from __future__ import annotations

ALL_HEADS = "all heads"
SIDES = {"Encoder self-attention": ("encoder_attention", "encoder_layers", "encoder_attention_heads"),
         "Decoder self-attention": ("decoder_attention", "decoder_layers", "decoder_attention_heads")}


def attention_page(trace, st) -> None:
    from probe.dashboards import context

    config = (trace.manifest.get("model") or {}).get("config") or {}
    st.title("Attention explorer")
    side = st.radio("Attention", list(SIDES), horizontal=True, key="attn_side")
    figure, layers_key, heads_key = SIDES[side]
    left, right = st.columns(2)
    layer = left.selectbox("Layer", range(int(config.get(layers_key, 1))), key=f"attn_layer_{figure}")
    head = right.selectbox("Head", [ALL_HEADS, *range(int(config.get(heads_key, 1)))], key=f"attn_head_{figure}")
    if figure == "encoder_attention":
        st.caption("Queries (rows) and keys (columns) are encoder frames over the audio of the first window; "
                   "a bright diagonal is a head attending locally, vertical stripes are frames every query reads.")
    else:
        st.caption("Causal: each token (row) reads only itself and earlier tokens, starting with the prompt.")
    context.show_figure(trace, figure, layer=layer, head=None if head == ALL_HEADS else head)
    st.subheader("Every encoder head at a glance")
    st.caption("Entropy: how spread out a head's attention is (0 = one frame). Distance: how far, on average, "
               "a frame looks away from itself.")
    context.show_figure(trace, "attention_summary")
