#!/usr/bin/env bash
# System packages for c2a-jax: Vulkan through Mesa's lavapipe (Mesa >= 24) and ffmpeg.
# Idempotent: installs nothing when everything is present. Debian/Ubuntu only; elsewhere it says
# what to install. On Debian 12 the Mesa packages come from bookworm-backports (stock 22.3 cannot
# render for SAPIEN 3: "Failed to find a supported physical device").
set -euo pipefail

pkg_version() { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | awk '/install ok installed/ {print $4}'; }
major() { local v="${1#*:}"; echo "${v%%.*}"; }

missing=()
mesa=$(pkg_version mesa-vulkan-drivers || true)
if [ -z "$mesa" ] || [ "$(major "$mesa")" -lt 24 ]; then missing+=(mesa-vulkan-drivers); fi
[ -n "$(pkg_version libvulkan1 || true)" ] || missing+=(libvulkan1)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)

if [ ${#missing[@]} -eq 0 ]; then
  echo "system: Mesa $(pkg_version mesa-vulkan-drivers), libvulkan1, ffmpeg present"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system: missing ${missing[*]}; install Mesa >= 24 with its Vulkan drivers (lavapipe), the Vulkan loader and ffmpeg with your package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "system: missing ${missing[*]} and not root; run as root: apt-get install ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
echo "system: installing ${missing[*]}"
if [ "$codename" = "bookworm" ]; then
  list=/etc/apt/sources.list.d/bookworm-backports.list
  if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo "deb http://deb.debian.org/debian bookworm-backports main" | $SUDO tee "$list" >/dev/null
  fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1 >/dev/null
  $SUDO apt-get install -y -qq ffmpeg >/dev/null
else
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1 ffmpeg >/dev/null
fi
mesa=$(pkg_version mesa-vulkan-drivers || true)
if [ -z "$mesa" ] || [ "$(major "$mesa")" -lt 24 ]; then
  echo "system: Mesa $mesa is too old for SAPIEN 3 on the CPU; Mesa >= 24 is needed" >&2
  exit 1
fi
echo "system: Mesa $mesa, libvulkan1, ffmpeg installed"
