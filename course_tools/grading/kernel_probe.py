"""The grader's code inside a graded kernel (issue 16, "tests that answer cells cannot disarm").

The grading worker sends this file's text to the kernel once, before the notebook's first
cell, as an execute request that IPython keeps out of its history, followed by
``__course_grader__ = _course_grader_boot()``. ``_course_grader_boot`` makes a random key,
prints it once (the worker reads it from that reply, before any student code exists), and
returns one function, ``__course_grader__(command, challenge, *args)``. Every reply to the
worker is a stdout line ``COURSE-GRADER <hmac> <json>`` signed with HMAC-SHA256(key,
challenge + json); the worker checks the signature, so a student's transformer or hook that
replaces the request cannot make up the reply without digging the key out of this closure.

Commands (each request carries a fresh ``challenge``):

- ``before_answer``: remember what the tests may rely on: the callables of the watched
  modules (numpy, pandas, math, operator, course_lib, IPython's shell and compiler, ... and
  every module bound in the notebook), the notebook's lesson variables (binding; functions'
  code; plain data as a pickle, up to 64 MB each) except the names ``args[0]`` that the answer
  cell itself assigns; ``args[1]``: the names the lesson's own cells assign (the only lesson
  variables a note may name);
- ``before_tests``: check and reset everything an answer cell can use to disarm a tests cell:
  IPython's input and AST transformers, event callbacks, custom exception handler, shell
  methods, ``sys`` hooks (trace, profile, excepthook, displayhook), the built-ins, the watched
  modules' callables; put back lesson variables the answer changed and set aside the
  answer's names that shadow built-ins *and* that the tests cell uses (``args[0]``: the
  built-in names the tests cell's source refers to; an honest helper ``def format(row)``
  that the tests never name stays). Replies the list of tampering (hooks, patched functions)
  and notes (variables restored, names set aside, a traceback display hook such as
  ``rich.traceback.install()`` put back: it cannot make a failing test pass). Names a
  student chose (an added built-in, an attribute, an event name) are only counted, never
  echoed: hidden tests read by the answer must not leave through them;
- ``done``: called as the last statement of a tests cell (wrapping its last expression, so
  that a partial-credit value stays the cell's result): replies that the tests ran to the end;
- ``record`` (the trusted check, :mod:`course_tools.grading.observe`): wrap the answer's
  callables among ``args[0]`` so that the tests' calls are recorded; ``export``: put them
  back and write the values of the names ``args[1]`` and the recorded calls to the files
  ``args[0]`` ``.json``/``.npz`` of the working folder (untrusted data for the grader);
- ``after_tests``: forget the tests cell's source (linecache, the last traceback and
  execution result), so later answer cells cannot read hidden tests from the kernel, put
  back the names set aside, and check the hooks again: one that came back while the tests
  ran (a background thread of the answer) makes the tests untrustworthy.

Standard library only. This is a guard inside the student's own process: code written to
attack it specifically (finding the key through ``gc`` or ``ctypes``) can still defeat it;
the sandbox (:mod:`course_tools.grading.sandbox`) keeps the secrets out of that process.
"""


def _course_grader_boot():  # noqa: C901 - one closure, sent to the kernel as one request
    import builtins
    import hmac
    import json
    import linecache
    import os
    import pickle
    import re
    import sys
    import threading
    import types

    shell = get_ipython()  # noqa: F821 - defined in the kernel
    key = os.urandom(32)
    new_hmac, dumps, loads, jdumps = hmac.new, pickle.dumps, pickle.loads, json.dumps
    getattr_, setattr_, isinstance_, id_, len_, sorted_ = (getattr, setattr, isinstance, id,
                                                           len, sorted)
    out = sys.stdout
    builtins_snapshot = dict(vars(builtins))
    ipython_names = {"In", "Out", "get_ipython", "exit", "quit", "open", "_", "__", "___",
                     "_ih", "_oh", "_dh", "_i", "_ii", "_iii", "__course_grader__",
                     "__builtin__", "__builtins__", "__name__", "__doc__", "__spec__",
                     "__loader__", "__package__"}
    watched_names = ("math", "operator", "functools", "itertools", "ast", "codeop",
                     "linecache", "numpy", "numpy.testing", "numpy.linalg", "numpy.random",
                     "pandas", "pandas.testing", "jax.numpy", "jax.random", "IPython.core.events",
                     "IPython.core.interactiveshell", "IPython.core.compilerop",
                     "IPython.core.inputtransformer2", "IPython.core.displayhook",
                     "ipykernel.zmqshell", "ipykernel.ipkernel", "ipykernel.kernelbase")
    stable = ("numpy", "math", "operator", "functools", "itertools", "statistics", "pandas",
              "course_lib", "jax.numpy", "jax.random", "random")
    modules = {}  # module name -> (module, {attribute: object})
    classes = {}  # id(class) -> (class, {attribute: object})
    shell_state = {
        "input_transformers_cleanup": list(shell.input_transformers_cleanup),
        "input_transformers_post": list(shell.input_transformers_post),
        "ast_transformers": list(shell.ast_transformers),
    }
    events = {name: list(callbacks) for name, callbacks in shell.events.callbacks.items()}
    trusted_events = set(events)
    shell_dict = set(vars(shell))
    kernel_dict = set(vars(shell.kernel)) if getattr(shell, "kernel", None) else set()
    # sys.excepthook and builtins.input are set by ipykernel for every request: not watched
    sys_hooks = {"displayhook": sys.displayhook, "breakpointhook": sys.breakpointhook,
                 "unraisablehook": sys.unraisablehook}
    custom = (shell.custom_exceptions, shell.CustomTB)
    lesson = {}  # name -> (object, code or None, pickle or None)
    skip = {"keep": set(), "lesson": set()}
    hidden = {}  # names shadowing built-ins, set aside while a tests cell runs
    # shell methods that only display a traceback: a replacement (rich.traceback.install())
    # cannot make a failing tests cell pass (the signed end marker decides), so it is put
    # back before the tests but reported as a note, not as tampering
    display_only = {"showtraceback", "_showtraceback", "showsyntaxerror",
                    "showindentationerror"}
    ident = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,79}")
    trusted_attrs = set()  # "module.attr" of the modules seen before the first answer ran
    state = {"student_ran": False}

    def cut(name):
        """``name`` if it is a (dotted) identifier of at most 80 characters, else None."""
        match = ident.fullmatch(str(name))
        return match.group(0) if match else None

    def report(entries, kind, names, trusted):
        """Appends to ``entries`` one line for ``names`` of ``kind``: names known before any
        student code ran (``trusted``) are shown (at most 3, each a short identifier), names
        a student chose only counted: hidden tests must not leak through them (issue 16)."""
        if not names:
            return
        unique = set(names)
        shown = [n for n in sorted_(unique) if n in trusted and cut(n)]
        rest = len_(unique) - len_(shown)
        text = ", ".join(shown[:3])
        if len_(shown) > 3:
            rest += len_(shown) - 3
        if rest:
            text += (" and " if text else "") + f"{rest} other name(s)"
        entries.append(f"{kind}: {text}")

    def reply(challenge, payload):
        text = jdumps(payload, sort_keys=True)
        mac = new_hmac(key, (challenge + text).encode(), "sha256").hexdigest()
        out.write(f"COURSE-GRADER {mac} {text}\n")
        out.flush()

    def remember_module(name, module):
        if name in modules or name == "builtins" or not isinstance_(module, types.ModuleType):
            return  # the built-ins are checked on their own
        attrs = {}
        for attr, obj in list(vars(module).items()):
            if callable(obj) or isinstance_(obj, types.ModuleType):
                attrs[attr] = obj
                if not state["student_ran"]:
                    trusted_attrs.add(f"{name}.{attr}")
                if isinstance_(obj, type) and getattr_(obj, "__module__", "") == name:
                    classes.setdefault(id_(obj), (obj, {k: v for k, v in vars(obj).items()
                                                        if callable(v)}))
        modules[name] = (module, attrs)

    def remember_modules():
        for name in watched_names:
            if name in sys.modules:
                remember_module(name, sys.modules[name])
        for name, module in list(sys.modules.items()):
            if name == "course_lib" or name.startswith("course_lib."):
                remember_module(name, module)
        for value in list(shell.user_ns.values()):
            # only modules whose functions never change by themselves (TensorFlow, Keras and
            # matplotlib replace module attributes lazily: an honest import is no tampering)
            if isinstance_(value, types.ModuleType) and value.__name__.startswith(stable):
                remember_module(value.__name__, value)

    def plain(obj, depth=0):
        """Total bytes if ``obj`` is plain data the grader can pickle back, else None."""
        if depth > 6:
            return None
        if obj is None or isinstance_(obj, bool | int | float | complex | str | bytes):
            return 64 + (len_(obj) if isinstance_(obj, str | bytes) else 0)
        kind = type(obj)
        module = getattr_(kind, "__module__", "") or ""
        if module.startswith(("numpy", "pandas")) and (
                getattr_(getattr_(obj, "dtype", None), "kind", "O") != "O"
                or kind.__name__ in ("DataFrame", "Series")):
            nbytes = getattr_(obj, "nbytes", None)
            if nbytes is None and hasattr(obj, "memory_usage"):
                try:
                    nbytes = int(obj.memory_usage(deep=True).sum())
                except Exception:  # noqa: BLE001
                    return None
            return int(nbytes or 64)
        if kind in (list, tuple, set, frozenset, dict):
            items = list(obj.items()) if kind is dict else [(None, v) for v in obj]
            if len_(items) > 100_000:
                return None
            total = 0
            for k, v in items:
                size = plain(v, depth + 1)
                if size is None or (k is not None and plain(k, depth + 1) is None):
                    return None
                total += size
            return total
        return None

    def remember_lesson(keep, lesson_names=()):
        lesson.clear()
        skip["keep"] = set(keep)
        skip["lesson"] = set(lesson_names)  # names the lesson's own cells assign: shown
        for name, value in list(shell.user_ns.items()):
            if name in ipython_names or name in skip["keep"] or name.startswith("_i"):
                continue
            code = None
            if isinstance_(value, types.FunctionType):
                code = (value.__code__, value.__defaults__, value.__kwdefaults__)
            data = None
            size = plain(value)
            if size is not None and size <= 64 * 2**20:
                try:
                    data = dumps(value, protocol=5)
                except Exception:  # noqa: BLE001 - not picklable after all: binding only
                    data = None
            lesson[name] = (value, code, data)

    def check(tampering, notes, lesson_too=True, used=()):
        found = {}  # kind -> names found (reported by report(): shown only when trusted)

        def add(kind, name):
            found.setdefault(kind, []).append(name)

        for attr, saved in shell_state.items():
            now = getattr_(shell, attr)
            if list(now) != saved:
                tampering.append(f"changed IPython's {attr}")
                now[:] = saved
        for name, callbacks in shell.events.callbacks.items():
            saved = events.setdefault(name, [])
            for callback in list(callbacks):
                if callback in saved:
                    continue
                owner = getattr_(callback, "__module__", "") or ""
                if owner.startswith(("matplotlib", "IPython.", "ipykernel.", "ipywidgets")):
                    saved.append(callback)  # %matplotlib inline and the like: not the student's
                else:
                    add("registered IPython event callback(s) for", name)
            if list(callbacks) != saved:
                callbacks[:] = saved
        if (shell.custom_exceptions, shell.CustomTB) != custom:
            tampering.append("set a custom exception handler (set_custom_exc)")
            shell.custom_exceptions, shell.CustomTB = custom
        for attr in sorted_(set(vars(shell)) - shell_dict):
            if callable(vars(shell)[attr]):
                add("display" if attr in display_only else "replaced the shell's method(s)",
                    attr)
                delattr(shell, attr)
        kernel = getattr_(shell, "kernel", None)
        if kernel is not None:
            for attr in sorted_(set(vars(kernel)) - kernel_dict):
                if callable(vars(kernel)[attr]):
                    add("replaced the kernel's method(s)", attr)
                    delattr(kernel, attr)
        for attr, saved in sys_hooks.items():
            if getattr_(sys, attr) is not saved:
                tampering.append(f"replaced sys.{attr}")
                setattr_(sys, attr, saved)
        if sys.gettrace() is not None or sys.getprofile() is not None:
            tampering.append("set a trace or profile function")
            sys.settrace(None)
            sys.setprofile(None)
        if threading.gettrace() is not None or threading.getprofile() is not None:
            tampering.append("set a thread trace or profile function")
            threading.settrace(None)
            threading.setprofile(None)
        current = vars(builtins)
        for name in sorted_(set(current) | set(builtins_snapshot)):
            if name in ("_", "__IPYTHON__", "display", "get_ipython", "__debug__", "input",
                        "raw_input", "getpass", "exit", "quit", "help"):
                continue
            if name not in builtins_snapshot:
                if name.startswith("__"):  # pybind11 and others keep their internals there
                    builtins_snapshot[name] = current[name]
                    continue
                add("added built-in name(s)", name)
                del current[name]
            elif current.get(name) is not builtins_snapshot[name]:
                add("replaced the built-in(s)", name)
                current[name] = builtins_snapshot[name]
        for name, (module, attrs) in modules.items():
            namespace = vars(module)
            for attr, obj in list(attrs.items()):
                now = namespace.get(attr)
                if now is obj:
                    continue
                if isinstance_(now, types.ModuleType) and isinstance_(obj, types.ModuleType):
                    attrs[attr] = now  # a lazily loaded submodule took its placeholder's place
                    continue
                add("replaced library function(s)", f"{name}.{attr}")
                namespace[attr] = obj
        for cls, attrs in classes.values():
            for attr, obj in attrs.items():
                if vars(cls).get(attr) is not obj:
                    add("replaced library method(s)", f"{cls.__qualname__}.{attr}")
                    setattr_(cls, attr, obj)
        for kind, names in found.items():
            if kind == "display":
                continue
            trusted = {"registered IPython event callback(s) for": trusted_events,
                       "replaced the shell's method(s)": boot_shell,
                       "replaced the kernel's method(s)": boot_kernel,
                       "replaced the built-in(s)": boot_builtins}.get(kind, ())
            if kind == "replaced library function(s)":
                trusted = trusted_attrs
            report(tampering, kind, names, trusted)
        if "display" in found:
            report(notes, "a traceback display hook your code installed (e.g. "
                   "rich.traceback.install()) was put back while the tests ran; it cannot "
                   "change their result", found["display"], display_only)
        if not lesson_too:
            return
        restored, shadowing = [], []
        user_ns = shell.user_ns
        for name, (value, code, data) in lesson.items():
            now = user_ns.get(name, lesson)
            if now is not value:
                user_ns[name] = value if data is None else loads(data)
                restored.append(name)
            elif code is not None and (value.__code__, value.__defaults__,
                                       value.__kwdefaults__) != code:
                value.__code__, value.__defaults__, value.__kwdefaults__ = code
                restored.append(name)
            elif data is not None:
                try:
                    same = dumps(value, protocol=5) == data
                except Exception:  # noqa: BLE001
                    same = False
                if not same:
                    user_ns[name] = loads(data)
                    restored.append(name)
        hidden.clear()
        for name in sorted_(user_ns):
            if name in builtins_snapshot and name in used and name not in skip["lesson"] \
                    and name not in ipython_names and name not in skip["keep"] \
                    and not name.startswith("__"):
                hidden[name] = user_ns.pop(name)  # put back after the tests (after_tests)
                shadowing.append(name)
        if restored:
            report(notes, "lesson variable(s) your answer changed were restored before the "
                   "tests ran", restored, skip["lesson"])
        if shadowing:
            report(notes, "name(s) of Python built-ins your answer reused were set aside "
                   "while the tests that use them ran", shadowing, boot_builtins)

    before = {"linecache": set()}

    observe = globals().get("_course_observe") or {}  # observe.py, run by the loader

    def grader(command, challenge, *args):
        if command == "done":
            reply(challenge, {"done": True})
            return args[0] if args else None
        if command == "before_answer":
            remember_modules()
            remember_lesson(*args)
            state["student_ran"] = True  # from now on, names may be the student's
            reply(challenge, {"ok": True})
        elif command == "before_tests":
            tampering, notes = [], []
            check(tampering, notes, used=set(args[0]) if args else set(builtins_snapshot))
            user_ns = shell.user_ns
            user_ns["__course_grader__"] = grader
            before["linecache"] = set(linecache.cache)
            reply(challenge, {"tampering": tampering[:20], "notes": notes})
        elif command == "record" and observe:
            state["recorder"] = observe["Recorder"](shell.user_ns, args[0])
            reply(challenge, {"ok": True})
        elif command == "export" and observe:
            recorder = state.pop("recorder", None)
            if recorder is not None:
                recorder.restore()
            try:
                observe["export"](shell.user_ns, args[0], args[1], recorder)
                reply(challenge, {"ok": True})
            except Exception as exc:  # noqa: BLE001 - no file: the trusted check says so
                reply(challenge, {"ok": False, "error": type(exc).__name__[:40]})
        elif command == "after_tests":
            for name in set(linecache.cache) - before["linecache"]:
                linecache.cache.pop(name, None)
                getattr_(linecache, "_ipython_cache", {}).pop(name, None)
            for attr in ("last_type", "last_value", "last_traceback", "last_exc"):
                if hasattr(sys, attr):
                    setattr_(sys, attr, None)
            shell.last_execution_result = None
            user_ns = shell.user_ns
            for name, value in list(hidden.items()):
                if name not in user_ns:
                    user_ns[name] = value  # the answer's own helper, for its later cells
            hidden.clear()
            during, later = [], []
            check(during, later, lesson_too=False)  # hooks put back while the tests ran
            reply(challenge, {"tampering": during[:20], "notes": later[:5]})
        return None

    out.write(f"COURSE-GRADER-KEY {key.hex()}\n")
    out.flush()
    remember_modules()
    # names known before any student code ran: the only ones a report may show
    boot_builtins = frozenset(builtins_snapshot)
    boot_shell = frozenset(dir(type(shell)))
    boot_kernel = frozenset(dir(type(shell.kernel))) if getattr(shell, "kernel", None) \
        else frozenset()
    return grader
