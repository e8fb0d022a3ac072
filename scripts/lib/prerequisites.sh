# Shared by scripts/test and scripts/demo: make sure the Debian packages the
# testbed needs are installed and the host's package lists are current.
#
# Usage: ensure_debian_packages PACKAGE...

ensure_debian_packages() {
  local missing=()
  local package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  # The testbed fetches real Debian packages with the host's apt, which
  # needs the host's package lists.
  local lists_missing=false
  compgen -G "/var/lib/apt/lists/*Packages*" > /dev/null || lists_missing=true

  if [ "${#missing[@]}" -eq 0 ] && [ "$lists_missing" = false ]; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: this needs root, the Debian packages $* and current package lists (missing: ${missing[*]:-none}; package lists missing: $lists_missing)" >&2
    echo "hint: run it as root, e.g. with sudo" >&2
    return 1
  fi
  apt-get update -q
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing: ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

# Installs a folder's npm packages from its package-lock.json with `npm ci`,
# unless they were installed from this very lock file already.
#
# Usage: ensure_npm_packages FOLDER
ensure_npm_packages() {
  local folder="$1"
  local stamp="$folder/node_modules/.installed-from-package-lock.json"
  if cmp -s "$folder/package-lock.json" "$stamp"; then
    return 0
  fi
  echo "installing the npm packages of $folder" >&2
  (cd "$folder" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$folder/package-lock.json" "$stamp"
}
