"""``interdyn app``: a browser UI over ``interdyn generate`` (needs the ``[app]`` extra, Gradio).

- :mod:`interdyn.app.paths`: a painted mask dragged along a polyline -> driver frames (pure numpy).
- :mod:`interdyn.app.engine`: what the buttons do (inputs to files, ``interdyn generate`` on them).
- :mod:`interdyn.app.scenes`: first frames of the built-in synthetic world.
- :mod:`interdyn.app.ui`: the Gradio page; :mod:`interdyn.app.main`: the command line.
"""
