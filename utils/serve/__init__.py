"""The attention editor (explain.py --serve), a room of one concern a module: the server
(server), the page's layout and events (page, teach_page), a visitor's answers over the model
(editor), the images it serves (gallery), its pictures (pictures), single-label versus
multi-task models (kinds), teaching from the page (teach: what is taught and measured;
teach_job: the background run), who may reach it (access), and its command-line options
(options). The saved maps' store is utils.teach.map_store, which --attention-maps reads."""
