"""The layout's rules (docs/testing.md): the library never imports a script, the project's
imports form no circle, utils/cli.py is the scripts' alone, importing utils.objectives
registers every objective, no class passes its members on to another object or copies its
fields (a forwarder), and no library function grows past a screen and a half.

The import graph is read from the source with `ast` (imports inside functions too), so a
rule breaks here before it breaks at run time."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ('utils', 'models')
LONGEST_FUNCTION = 80  # lines, in the library (utils/, models/)


def project_modules():
    """{dotted name: file} of the library packages and the top-level scripts."""
    modules = {}
    for package in LIBRARY:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith('.py'):
                    path = os.path.join(folder, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    if parts[-1] == '__init__':
                        parts = parts[:-1]
                    modules['.'.join(parts)] = path
    for name in os.listdir(ROOT):
        if name.endswith('.py'):
            modules[name[:-3]] = os.path.join(ROOT, name)
    return modules


def scripts(modules):
    return {name for name in modules if '.' not in name and name not in LIBRARY}


def imported_names(module, path, modules=None):
    """Every module name that `module` imports (absolute), anywhere in the file. `from pkg
    import name` imports the module pkg.name where there is one (given `modules`), else pkg."""
    is_package = os.path.basename(path) == '__init__.py'
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split('.')
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = '.'.join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                submodule = f'{source}.{alias.name}'
                yield submodule if modules is None or submodule in modules else source


def import_graph(modules=None):
    """{module: set of project modules it imports}; a name that is not a module of the
    project (a third-party package) adds no edge."""
    modules = modules or project_modules()
    graph = {}
    for module, path in modules.items():
        graph[module] = {name for name in imported_names(module, path, modules)
                         if name in modules and name != module}
    return graph


def find_cycle(graph):
    """One import circle as a list [a, b, ..., a], or None: a depth-first walk that stops at
    the first edge back to a module still on its path."""
    on_path, done = [], set()

    def visit(module):
        on_path.append(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return on_path[on_path.index(target):] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        on_path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_names_a_circle_and_passes_a_tree():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_relative_and_function_level_imports_are_seen(tmp_path):
    package = tmp_path / 'utils' / 'room'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text('from . import a\n')
    (package / 'a.py').write_text('def f():\n    from .b import g\n    import cifar\n')
    modules = {'utils.room', 'utils.room.a', 'utils.room.b', 'cifar'}
    assert set(imported_names('utils.room.a', str(package / 'a.py'), modules)) == \
        {'utils.room.b', 'cifar'}
    assert set(imported_names('utils.room', str(package / '__init__.py'), modules)) == \
        {'utils.room.a'}


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert 'utils.teach.attention_maps' in graph['utils.train.teaching']
    assert 'utils.train.engine' in graph['cifar']
    assert 'utils.objectives.base' in graph['utils.objectives']
    assert {'cifar', 'imagenet', 'celeba', 'explain'} <= scripts(graph)


def test_a_script_reaches_the_training_loop_in_one_hop_not_through_teaching():
    """cifar.py, imagenet.py and celeba.py call the training room's main, where the loop is;
    map teaching is what the engine adds, not a door the scripts go through."""
    graph = import_graph()
    for script in ('cifar', 'imagenet', 'celeba'):
        assert 'utils.train.engine' in graph[script]
        assert not [m for m in graph[script] if m.startswith('utils.teach')], script


def test_no_library_module_imports_a_script():
    modules = project_modules()
    top = scripts(modules)
    wrong = {module: sorted(targets & top) for module, targets in import_graph(modules).items()
             if module.split('.')[0] in LIBRARY and targets & top}
    assert not wrong, f'library modules that import a script: {wrong}'


def test_the_imports_form_no_circle():
    cycle = find_cycle(import_graph())
    assert cycle is None, 'import circle: ' + ' -> '.join(cycle)


def test_only_the_scripts_import_the_command_line_module():
    modules = project_modules()
    users = {module for module, targets in import_graph(modules).items()
             if 'utils.cli' in targets and module.split('.')[0] in LIBRARY}
    assert not users, f'utils.cli is for the scripts; imported by {sorted(users)}'


def registered_objectives(code):
    out = subprocess.run([sys.executable, '-c', code + '\nfrom utils.objectives.base import '
                          'OBJECTIVES\nprint(" ".join(sorted(OBJECTIVES)))'],
                         cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_importing_the_package_registers_every_objective():
    """In a fresh interpreter: what `import utils.objectives` registers is what importing
    every module of the project registers, so no objective waits for a script to import it."""
    alone = registered_objectives('import utils.objectives')
    everything = registered_objectives(
        'import importlib\n'
        f'for name in {sorted(project_modules())!r}:\n'
        '    importlib.import_module(name)')
    assert alone == everything
    assert {'single-label', 'attention-maps', 'multi-label', 'multi-label-focal'} <= set(alone)
    from utils.objectives import get_objective
    assert get_objective('multi-label').name == 'multi-label'


def class_trees(package):
    """(module, ast.ClassDef) of every class of `package` (a library package, or 'scripts')."""
    modules = project_modules()
    chosen = scripts(modules) if package == 'scripts' else \
        [m for m in modules if m.split('.')[0] == package]
    for module in chosen:
        with open(modules[module], encoding='utf-8') as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                yield module, node


def member_of_self(node):
    """'x' for `self.x.<anything>`, else None."""
    while isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name) \
                and node.value.value.id == 'self':
            return node.value.attr
        node = node.value
    return None


def forwarded_member(function):
    """The member a method only passes on to: its body (a docstring apart) one `return
    self.x.y(its own arguments)` or `self.x.y(...)`, or a property's `return self.x.y`."""
    body = [n for n in function.body if not (isinstance(n, ast.Expr) and
                                              isinstance(n.value, ast.Constant))]
    if len(body) != 1 or not isinstance(body[0], (ast.Return, ast.Expr)) or body[0].value is None:
        return None
    value = body[0].value
    own = [a.arg for a in function.args.args[1:]]
    if isinstance(value, ast.Call):
        passed = [a.id for a in value.args if isinstance(a, ast.Name)]
        if passed == own and len(value.args) == len(own) and not value.keywords:
            return member_of_self(value.func)
        return None
    properties = [d for d in function.decorator_list if getattr(d, 'id', None) == 'property']
    return member_of_self(value) if properties and isinstance(value, ast.Attribute) else None


def copied_attributes(cls):
    """{source: [names]}: `self.name = source.name` assignments, the same name on both sides."""
    copied = {}
    for node in ast.walk(cls):
        if not isinstance(node, ast.Assign):
            continue
        targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else \
            node.targets[:1]
        values = node.value.elts if isinstance(node.value, ast.Tuple) else [node.value]
        for target, value in zip(targets, values):
            if isinstance(target, ast.Attribute) and getattr(target.value, 'id', None) == 'self' \
                    and isinstance(value, ast.Attribute) and value.attr == target.attr:
                copied.setdefault(ast.unparse(value.value), []).append(target.attr)
    return copied


FORWARDS = 2  # members a class may pass on to one other object: more, and it is that object
COPIES = 3  # attributes a class may copy, same name, from one other object


@pytest.mark.parametrize('package', LIBRARY + ('scripts',))
def test_no_class_forwards_to_another_or_copies_its_fields(package):
    """A class that passes several of its members on to one member object, or copies its
    fields one by one, is that object again (a forwarder): callers use the object."""
    found = []
    for module, cls in class_trees(package):
        passed = {}
        for function in cls.body:
            if isinstance(function, ast.FunctionDef):
                member = forwarded_member(function)
                if member:
                    passed.setdefault(member, []).append(function.name)
        found += [f'{module}.{cls.name} forwards {names} to self.{member}'
                  for member, names in passed.items() if len(names) > FORWARDS]
        found += [f'{module}.{cls.name} copies {names} from {source}'
                  for source, names in copied_attributes(cls).items() if len(names) > COPIES]
    assert not found, found


def test_the_forwarder_finder_finds_one():
    tree = ast.parse('''
class Shell:
    def __init__(self, inner, setup):
        self.inner = inner
        self.a, self.b = setup.a, setup.b
        self.c = setup.c
        self.d = setup.d

    def load(self, path):
        return self.inner.load(path)

    def save(self, path, data):
        """Saves."""
        self.inner.store.save(path, data)

    @property
    def names(self):
        return self.inner.names

    def own(self, x):
        return self.inner.load(x) + 1
''')
    cls = tree.body[0]
    members = [forwarded_member(f) for f in cls.body if isinstance(f, ast.FunctionDef)]
    assert members == [None, 'inner', 'inner', 'inner', None]
    assert copied_attributes(cls) == {'setup': ['a', 'b', 'c', 'd']}


@pytest.mark.parametrize('package', LIBRARY)
def test_no_library_function_is_longer_than_a_screen_and_a_half(package):
    modules = project_modules()
    long = []
    for module in [m for m in modules if m.split('.')[0] == package]:
        with open(modules[module], encoding='utf-8') as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_FUNCTION:
                    long.append(f'{module}.{node.name}: {lines} lines')
    assert not long, f'functions over {LONGEST_FUNCTION} lines: {long}'


def test_every_module_says_its_concern():
    """Each module of the library opens with a comment (its docstring) saying what it is."""
    modules = project_modules()
    silent = []
    for module, path in modules.items():
        if module.split('.')[0] not in LIBRARY:
            continue
        with open(path, encoding='utf-8') as f:
            tree = ast.parse(f.read())
        if not ast.get_docstring(tree):
            silent.append(module)
    assert not silent, f'modules without an opening docstring: {silent}'
