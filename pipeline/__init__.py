"""alignlab's pure ML layer: configs, formats, validation, model loading, artifacts and stages.

Imports nothing of ours outside `pipeline/` and never redis, rq, sqlalchemy or streamlit.
"""

__version__ = "0.1.0"
