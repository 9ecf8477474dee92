"""Job attachments, compatible with AWS Deadline Cloud and its ``deadline`` client library.

The pieces, from the bottom up:

- manifests (``Manifest``, ``decode_manifest``): format v2023-03-03, canonical JSON;
- hashing (``hash_file``, ``hash_bytes``): xxh128, in worker threads;
- S3 (``S3Settings``, ``S3Transfers``, ``make_s3_client``): the key layout and
  streaming, bounded, concurrent, verified transfers;
- sessions (``JobAttachments``, ``sync_inputs``, ``OutputSnapshot``,
  ``upload_outputs``, ``path_mapping_rules``): what the worker does for
  ``syncInputJobAttachments`` and after each task run.
"""

from ._errors import AttachmentError as AttachmentError
from ._errors import HashMismatchError as HashMismatchError
from ._errors import ManifestError as ManifestError
from ._errors import MissingObjectError as MissingObjectError
from ._errors import TransferError as TransferError
from ._hashing import hash_bytes as hash_bytes
from ._hashing import hash_file as hash_file
from ._hashing import hash_file_sync as hash_file_sync
from ._manifest import Manifest as Manifest
from ._manifest import ManifestPath as ManifestPath
from ._manifest import check_relative_path as check_relative_path
from ._manifest import decode_manifest as decode_manifest
from ._manifest import merge_manifests as merge_manifests
from ._s3 import Progress as Progress
from ._s3 import ProgressCallback as ProgressCallback
from ._s3 import S3Settings as S3Settings
from ._s3 import S3Transfers as S3Transfers
from ._s3 import TransferStatistics as TransferStatistics
from ._s3 import make_s3_client as make_s3_client
from ._s3 import output_manifest_partial_prefix as output_manifest_partial_prefix
from ._sync import COPIED as COPIED
from ._sync import VIRTUAL as VIRTUAL
from ._sync import JobAttachments as JobAttachments
from ._sync import ManifestProperties as ManifestProperties
from ._sync import OutputManifestReport as OutputManifestReport
from ._sync import OutputSnapshot as OutputSnapshot
from ._sync import PathMapping as PathMapping
from ._sync import SyncedRoot as SyncedRoot
from ._sync import download_files as download_files
from ._sync import fetch_manifest as fetch_manifest
from ._sync import fetch_output_manifests as fetch_output_manifests
from ._sync import local_root as local_root
from ._sync import local_root_name as local_root_name
from ._sync import path_mapping_rules as path_mapping_rules
from ._sync import sync_inputs as sync_inputs
from ._sync import upload_outputs as upload_outputs
