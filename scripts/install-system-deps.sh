#!/usr/bin/env bash
# Installs the system packages the test suite and benchmarks need, only when missing:
#   Orthanc (+ dcmtk's storescu, + its DICOMweb plugin for STOW-RS) for the upload tests, Debian's Chromium for the review UI
#   browser test (Playwright drives it directly: no ChromeDriver), tesseract for the OCR
#   screen, and Java for Google's Datastore emulator.
# The Datastore emulator itself ships with the Google Cloud SDK on these machines
# (/usr/lib/google-cloud-sdk); elsewhere: `gcloud components install cloud-datastore-emulator`.
set -euo pipefail

need=()
command -v Orthanc >/dev/null 2>&1 || need+=(orthanc)
[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || need+=(orthanc-dicomweb)
command -v storescu >/dev/null 2>&1 || need+=(dcmtk)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v tesseract >/dev/null 2>&1 || need+=(tesseract-ocr)
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
fc-list 2>/dev/null | grep -qi dejavu || need+=(fonts-dejavu-core)

if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "system packages missing (${need[*]}) and not root: run 'sudo apt-get install -y ${need[*]}'" >&2
    exit 1
  fi
fi
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
