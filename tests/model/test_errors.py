"""The error family (model.errors): every exception class of our packages is a UserError or a
ServerFault, and keeps the built-in type (ValueError, RuntimeError) it had before the family."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from model.errors import BundleError, InputError, LatentsegError, ServerFault, UserError

PACKAGES = ("model", "service", "worker", "training", "cli")
BASES = (LatentsegError, UserError, ServerFault)
# Outside the family on purpose (model.errors says why); a subclass of one is outside too.
NOT_ERRORS = {
    "worker.contracts.JobInterrupted",  # a BaseException: no `except Exception` may swallow it
    "worker.runtime.WorkerStopping",  # a signal's control flow in the idle wait
    "service.client.ApiError",  # the client's copy of the server's answer, 4xx or 5xx
}
# What `except ValueError` / `except RuntimeError` caught before the family must stay caught.
BUILTIN_OF = {
    "model.errors.InputError": ValueError,
    "model.errors.BundleError": ValueError,
    "model.io.dicomweb.DicomwebError": RuntimeError,
    "model.io.dicomweb.SeriesChoiceError": ValueError,
    "model.targets.vocabulary.UnknownTargetError": ValueError,
    "model.targets.vocabulary.UnknownDatasetError": ValueError,
    "service.auth.OpenModeRefused": RuntimeError,
    "service.uploads.nifti.UploadRejected": ValueError,
    "service.prompt_targets.TargetTextTooLong": ValueError,
    "worker.contracts.PayloadError": ValueError,
    "worker.tasks.JobStopped": RuntimeError,
    "worker.tasks.OverMemoryBudget": RuntimeError,
    "training.config.ConfigError": ValueError,
    "training.data.DatasetFormatError": ValueError,
    "training.finetune.FinetuneError": ValueError,
    "training.text_embeddings.TextEmbeddingsUnavailable": RuntimeError,
}


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _our_exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of our packages (all of them imported)."""
    found: dict[str, type[BaseException]] = {}
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        modules = [package] + [
            importlib.import_module(info.name) for info in pkgutil.walk_packages(package.__path__, f"{package_name}.")
        ]
        for module in modules:
            for _, obj in inspect.getmembers(module, inspect.isclass):
                if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                    found[_name(obj)] = obj
    return found


@pytest.fixture(scope="module")
def classes() -> dict[str, type[BaseException]]:
    found = _our_exception_classes()
    assert len(found) > 30, sorted(found)  # the walk found the packages' modules
    return found


def _outside(cls: type) -> bool:
    return any(_name(base) in NOT_ERRORS for base in cls.__mro__)


def test_every_exception_class_is_a_user_error_or_a_server_fault(classes: dict[str, type[BaseException]]) -> None:
    wrong = []
    for name, cls in sorted(classes.items()):
        if cls in BASES or _outside(cls):
            continue
        sides = [base.__name__ for base in (UserError, ServerFault) if issubclass(cls, base)]
        if len(sides) != 1:
            wrong.append(f"{name} ({', '.join(sides) or 'neither'}; bases {[b.__name__ for b in cls.__bases__]})")
    assert not wrong, "derive each from exactly one of model.errors.UserError / ServerFault: " + "; ".join(wrong)


def test_the_classes_left_outside_exist_and_stay_outside(classes: dict[str, type[BaseException]]) -> None:
    for name in NOT_ERRORS:
        assert name in classes, f"{name} is gone: drop it from NOT_ERRORS"
        assert not issubclass(classes[name], LatentsegError), name
    assert not issubclass(classes["worker.contracts.JobInterrupted"], Exception)


def test_statuses_are_4xx_for_user_errors_and_5xx_for_server_faults(classes: dict[str, type[BaseException]]) -> None:
    for name, cls in classes.items():
        if issubclass(cls, UserError):
            assert 400 <= cls.status < 500, (name, cls.status)
        elif issubclass(cls, ServerFault):
            assert 500 <= cls.status < 600, (name, cls.status)


def test_built_in_types_are_kept(classes: dict[str, type[BaseException]]) -> None:
    for name, builtin in BUILTIN_OF.items():
        assert issubclass(classes[name], builtin), (name, builtin)
    # The bases add none: a class is a ValueError only where it says so.
    for base in BASES:
        assert base.__bases__ in ((Exception,), (LatentsegError,)), base


def test_detail_is_the_message_or_an_object_with_the_fields() -> None:
    from model.targets.vocabulary import default_vocabulary

    assert InputError("the volume is 2-D").detail() == "the volume is 2-D"
    assert issubclass(InputError, UserError) and issubclass(BundleError, ServerFault)
    with pytest.raises(UserError) as refused:
        default_vocabulary().get("livr")
    detail = refused.value.detail()
    assert isinstance(detail, dict) and detail["message"] == str(refused.value)
    assert detail["unknown"] == ["livr"] and "liver" in detail["valid"] and "liver" in detail["suggestions"]["livr"]
