"""The attention editor (explain.py --serve): what a visitor looks at and edits, without the
page (editor), and the Gradio page over it (page)."""
