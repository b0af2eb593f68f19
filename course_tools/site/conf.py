"""Sphinx configuration of the course site, copied by ``course_tools.runner.build_site`` into
the sources it writes (the executed lessons and the front page). Everything the pages use is
on the machine: no intersphinx, no remote fonts, scripts or badges; the built site works from
any static host and opened from the file system."""

project = "Choosing and using ML frameworks"
html_show_copyright = False
language = "en"

extensions = ["myst_nb"]
nb_execution_mode = "off"  # the lessons were executed by papermill already
nb_execution_raise_on_error = False
nb_merge_streams = True
nb_ipywidgets_js: dict = {}  # would load require.js and the widget manager from a CDN
myst_enable_extensions: list[str] = []  # no dollarmath: math would need MathJax from a CDN

# Known quirks of the lessons' own content, not errors of the site: lessons whose headings
# skip a level, outputs with a mime type Sphinx cannot render (widgets, e.g. progress bars),
# code blocks in a language Pygments lacks (```csv in docs/instructors.md).
suppress_warnings = [
    "myst.header",
    "mystnb.unknown_mime_type",
    "misc.highlighting_failure",
]

exclude_patterns = ["_build", "**.ipynb_checkpoints", ".*"]
master_doc = root_doc = "index"
templates_path: list[str] = []
html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["course.css"]
html_copy_source = False
html_show_sourcelink = False
html_last_updated_fmt = None
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
    "navigation_with_keys": False,
    "show_prev_next": True,
    "search_bar_text": "Search the course",
    "footer_content_items": [],
}
# Unset, the theme's script logs "Got invalid theme mode" as a console error on every page.
html_context = {"default_mode": "light"}
