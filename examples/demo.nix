# The demo of `./dev demo`: a few dependent derivations, built through tvixd
#
#   tvixctl build examples/demo.nix -o result      (or: tvixctl build --embedded ...)
#
# or by Nix itself, with the same store paths and byte-identical outputs:
#
#   nix-build examples/demo.nix
#
# There is no nixpkgs here: every builder is a static busybox (Debian's
# busybox-static, /bin/busybox), imported into the store as `<path>/busybox`
# and called as `busybox sh -c SCRIPT` — the way nixpkgs bootstraps.  Its shell
# runs the other busybox applets (mkdir, tr, sort, ...) without a PATH.
#
#   greeting ──┬──> words ──> histogram ──┐
#              └──> shout ────────────────┴──> hello (the result)
{ who ? "world" }:
let
  # Only the busybox binary of the bin directory (/bin is a symlink to usr/bin on Debian 12).
  busybox = builtins.path {
    name = "busybox";
    path = if builtins.pathExists /usr/bin/busybox then /usr/bin else /bin;
    filter = path: type: baseNameOf path == "busybox";
  };

  run = name: script: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "${busybox}/busybox";
    args = [ "sh" "-euc" script ];
  };

  greeting = run "greeting" ''
    echo "writing the greeting"
    echo "Hello, ${who}! Greetings from five derivations in examples/demo.nix." > $out
  '';

  words = run "words" ''
    echo "splitting the greeting into words"
    tr -cs 'A-Za-z' '\n' < ${greeting} | tr 'A-Z' 'a-z' | grep . > $out
  '';

  histogram = run "histogram" ''
    echo "counting letters"
    fold -w1 < ${words} | sort | uniq -c | sort -k1,1nr -k2 | head -n 5 > $out
    sleep 1   # long enough to watch it build
  '';

  shout = run "shout" ''
    echo "shouting"
    tr 'a-z' 'A-Z' < ${greeting} > $out
    sleep 1
  '';
in
run "hello" ''
  mkdir -p $out/bin $out/share
  cp ${greeting} $out/share/greeting
  cp ${shout} $out/share/shout
  echo "$(wc -l < ${words}) words; the most common letters:" > $out/share/letters
  cat ${histogram} >> $out/share/letters
  {
    echo "#!${busybox}/busybox sh"
    echo 'cat "$(dirname "$0")/../share/greeting"'
  } > $out/bin/hello
  chmod +x $out/bin/hello
  echo "hello is ready: $out/bin/hello"
''
