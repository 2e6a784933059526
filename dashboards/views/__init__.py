"""The dashboard's views: one Streamlit page script per view, run by ``st.navigation`` from
``app.py`` (never imported).  Each reads the sidebar's trace through ``context.current_trace()``
and draws with :mod:`probe.figures` through ``context.show_figure``."""
