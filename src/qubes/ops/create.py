"""qvm-create / qvm-add-template: stage files, then register under the lock."""
from __future__ import annotations

import os
from dataclasses import dataclass

from qubes.errors import QubesError, StorageError
from qubes.ops.dispvm import RESERVED
from qubes.storage import file as storage
from qubes.store.access import modify_collection, read_collection


@dataclass(frozen=True)
class CreateOptions:
    name: str
    vm_class: str = "AppVM"
    label: str | None = None
    template: str | None = None
    standalone: bool = False
    root_copy_from: str | None = None
    root_move_from: str | None = None
    memory: int | None = None
    vcpus: int | None = None
    internal: bool = False


def _register(app, opts: CreateOptions, template):
    return app.add_new_vm(opts.vm_class, opts.name, template=template, label=opts.label,
                          memory=opts.memory, vcpus=opts.vcpus,
                          internal=opts.internal or None)


def _choose_template(app, opts: CreateOptions):
    """The template name the new VM is based on, or None for standalone/templates."""
    from qubes.model.classes import vm_class
    try:
        cls = vm_class(opts.vm_class)
    except ValueError as exc:
        raise QubesError(str(exc)) from None
    if cls.is_disposablevm or cls.is_adminvm:
        raise QubesError(f"a {cls.TYPE} cannot be created with qvm-create")
    if cls.TEMPLATE_TYPE is None:
        if opts.template:
            raise QubesError("Template VM cannot be based on another template")
        return cls, None, None
    source = opts.template
    if source is None and cls.TEMPLATE_TYPE == "TemplateVM":
        if app.default_template is None:
            raise QubesError("No default TemplateVM defined!")
        source = app.default_template.name
    if source is not None:
        found = app.get(source)
        if found is None or not found.is_template:
            raise QubesError(f"There is no template VM named '{source}'")
        if found.TYPE != cls.TEMPLATE_TYPE:
            raise QubesError(f"'{source}' is a {found.TYPE}; a {cls.TYPE} is made from a "
                             f"{cls.TEMPLATE_TYPE}")
    if opts.standalone or opts.root_copy_from or opts.root_move_from:
        return cls, None, source
    return cls, source, source


def _images(cls, app, template_name, source_name, opts) -> dict:
    source = app.get(source_name) if source_name else None
    images: dict[str, str | int] = {}
    if source is not None and os.path.exists(source.private_img):
        images["private.img"] = source.private_img
    else:
        images["private.img"] = storage.PRIVATE_IMG_SIZE
    if template_name is None and not opts.root_move_from:  # owns its root (-R: moved in later)
        if opts.root_copy_from:
            images["root.img"] = opts.root_copy_from
        elif source is not None:
            images["root.img"] = source.root_img
        else:
            big = cls.TYPE in ("HVM", "TemplateHVM")
            images["root.img"] = storage.HVM_DISK_SIZE if big else storage.ROOT_IMG_SIZE
    return images


def create_vm(base_dir: str, host, opts: CreateOptions) -> None:
    if RESERVED.fullmatch(opts.name):
        raise QubesError(f"the name '{opts.name}' is reserved: dispN names are given to "
                         "DisposableVMs")
    if (opts.root_copy_from or opts.root_move_from) and opts.template and not opts.standalone:
        raise QubesError("root.img can be specified only for standalone VMs")
    if opts.root_copy_from and opts.root_move_from:
        raise QubesError("Only one of -r and -R may be given")
    for path in (opts.root_copy_from, opts.root_move_from):
        if path and not os.path.isfile(path):
            raise QubesError(f"File '{path}' does not exist or is not a regular file")
    with read_collection(base_dir, host) as app:
        cls, template_name, source_name = _choose_template(app, opts)
        vm = _register(app, opts, template_name)  # validates everything on a copy
        final_dir = vm.dir_path
        images = _images(cls, app, template_name, source_name, opts)
    tmp = storage.build_dir(final_dir, images)
    try:
        if opts.root_move_from:
            storage.move_dir(opts.root_move_from, os.path.join(tmp, "root.img"))
        with modify_collection(base_dir, host) as app:
            vm = _register(app, opts, template_name)
            storage.commit_dir(tmp, vm.dir_path)
    except BaseException:
        if opts.root_move_from and os.path.exists(os.path.join(tmp, "root.img")):
            os.rename(os.path.join(tmp, "root.img"), opts.root_move_from)
        storage.discard_dir(tmp)
        raise


def add_template(base_dir: str, host, name: str, dir_path: str | None = None,
                 conf_file: str | None = None, rpm: bool = False, label: str | None = None,
                 kernel: str | None = None) -> None:
    """Register an existing template directory holding root.img (always offline).

    `kernel` also becomes the default kernel when the collection has none.
    """
    with modify_collection(base_dir, host) as app:
        vm = app.add_new_vm("TemplateVM", name, label=label, installed_by_rpm=rpm or None)
        if kernel is not None:
            if app.default_kernel is None:
                app.set_global("default_kernel", kernel)
            vm.kernel = kernel
        if dir_path:
            vm.dir_path = os.path.abspath(dir_path)
        if conf_file:
            vm.conf_file = os.path.abspath(conf_file)
        if not os.path.isfile(vm.root_img):
            raise StorageError(f"{vm.root_img} does not exist: a template needs its root image")
        if not os.path.exists(vm.private_img):
            try:
                from qubes.util.sparse import create_sparse
                create_sparse(vm.private_img, storage.PRIVATE_IMG_SIZE)
            except OSError as exc:
                raise StorageError(f"cannot create {vm.private_img}: {exc.strerror}") from None
