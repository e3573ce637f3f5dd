"""Names, labels and quantities as Kubernetes reads them, and the constants they share.

Resource names (DNS-1035/1123), label values, resource quantities, image references and
``models:/`` URIs: the formats the settings and the validation check against.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from decimal import Decimal

from mlfolio.deploy import DeployError

# The routes and token variable of `mlfolio serve`, from its contract (no pandas there).
from mlfolio.serve.contract import LIVENESS_PATH as LIVENESS_PATH
from mlfolio.serve.contract import METRICS_PATH as METRICS_PATH
from mlfolio.serve.contract import READINESS_PATH as READINESS_PATH
from mlfolio.serve.contract import TOKEN_ENV as TOKEN_ENV

KUBERNETES_VERSION = "1.30.0"
BASE_IMAGE = "python:3.11-slim"
USER_ID = 10001  # numeric, so runAsNonRoot can verify the image's USER
CONTAINER_NAME = "model-server"
KSERVE_CONTAINER_NAME = "kserve-container"  # the container KServe treats as the predictor
KSERVE_DEPLOYMENT_MODE = "RawDeployment"  # "Standard" since KServe 0.15, which still takes this
PORT_NAME = "http"
TOKEN_SECRET_KEY = "token"
LABEL_PREFIX = "mlfolio/"
# Names are DNS-1035 labels (what Services and KServe need). KServe appends "-predictor"
# (and Knative "-00001-private") to the InferenceService name, within 63 characters.
MAX_NAME_LENGTH = 45
MIN_MEMORY_BYTES = 16 * 2**20  # below this a memory value is a typo ("512m" = 0.512 bytes)


# -- names, labels, quantities ---------------------------------------------------------
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dns_name(value: str, *, field: str = "model_name", max_length: int = MAX_NAME_LENGTH) -> str:
    """A DNS-1035 label made from a model name: ``"Breast_Cancer v2"`` → ``breast-cancer-v2``.

    Lowercased, accents dropped, every run of other characters becomes one ``-``; a leading
    digit gets a ``model-`` prefix. Longer than ``max_length``, it is cut and given a hash of
    the original so two long names stay distinct. Raises :class:`DeployError` naming
    ``field`` when no letter or digit is left.
    """
    text = re.sub(r"[^a-z0-9]+", "-", _ascii(value).lower()).strip("-")
    if not text:
        raise DeployError(
            f"{field} {value!r}: no Kubernetes name can be made from it (it has "
            "no ASCII letter or digit); pass name='my-model'"
        )
    if text[0].isdigit():
        text = f"model-{text}"
    if len(text) > max_length:
        text = f"{text[: max_length - 9].rstrip('-')}-{_short_hash(value)}"
    return text


def label_value(value: str, *, field: str) -> str:
    """A valid label value (63 characters of ``[A-Za-z0-9_.-]``, alphanumeric at both ends)."""
    text = re.sub(r"[^A-Za-z0-9_.-]+", "-", _ascii(value)).strip("-_.")
    if len(text) > 63:
        text = f"{text[:54].rstrip('-_.')}-{_short_hash(value)}"
    if not text:
        raise DeployError(
            f"{field} {value!r}: no label value can be made from it (it has no "
            "ASCII letter or digit)"
        )
    return text


_QUANTITY = re.compile(
    r"(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE](?P<exp>[+-]?\d+))?"
)
_SUFFIXES = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}


def parse_quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity (``250m``, ``1``, ``0.5``, ``512Mi``, ``1e3``) as a number.

    Raises ValueError for anything the API server would refuse.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(
            f"expected a quantity string such as '250m' or '512Mi', got {type(value).__name__}"
        )
    match = _QUANTITY.fullmatch(str(value).strip())
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 250m, 1, 0.5, 512Mi, 1Gi)")
    number = Decimal(match["num"])
    if match["suffix"]:
        return number * _SUFFIXES[match["suffix"]]
    if match["exp"]:
        return number.scaleb(int(match["exp"]))
    return number


# -- image references and model URIs (checked by KubernetesSettings) -----------------
_IMAGE_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_IMAGE_HOST = (
    rf"(?:{_IMAGE_DOMAIN}(?:\.{_IMAGE_DOMAIN})+(?::\d+)?|{_IMAGE_DOMAIN}:\d+"
    r"|localhost)"
)
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(
    rf"(?:(?P<host>{_IMAGE_HOST})/)?(?P<path>{_IMAGE_PATH}(?:/{_IMAGE_PATH})*)"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>sha256:[a-f0-9]{64}))?"
)
_MODEL_URI = re.compile(r"models:/(?P<name>[^@]+?)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?")
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "ip6-localhost"}
