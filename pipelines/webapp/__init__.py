"""The clinician web app (FastAPI + server-rendered pages): see pipelines/webapp/app.py."""
