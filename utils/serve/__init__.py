"""The attention editor (explain.py --serve): what a visitor looks at and edits, without the
page (editor), the Gradio page over it (page), who may reach it (access), and teaching from
it: fine-tuning runs on the saved maps and the taught model beside the first (teach, and its
section of the page, teach_page)."""
