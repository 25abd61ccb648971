"""The layout's rules (docs/testing.md): the library never imports a script, the project's
imports form no circle, utils/cli.py is the scripts' alone, importing utils.objectives
registers every objective, and no class grows past a few screens.

The import graph is read from the source with `ast` (imports inside functions too), so a
rule breaks here before it breaks at run time."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ('utils', 'models')
LONGEST_CLASS = 200  # lines
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


@pytest.mark.parametrize('package', LIBRARY + ('scripts',))
def test_no_class_is_longer_than_a_few_screens(package):
    modules = project_modules()
    chosen = scripts(modules) if package == 'scripts' else \
        [m for m in modules if m.split('.')[0] == package]
    long = []
    for module in chosen:
        with open(modules[module], encoding='utf-8') as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONGEST_CLASS:
                    long.append(f'{module}.{node.name}: {lines} lines')
    assert not long, f'classes over {LONGEST_CLASS} lines: {long}'


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
