use strict; use v5.12;
use PublicInbox::Config; use PublicInbox::InboxWritable;
my ($name, $mbox) = @ARGV;
my $ibx = PublicInbox::Config->new->lookup_name($name) or die "no inbox $name\n";
$ibx = PublicInbox::InboxWritable->new($ibx);
open my $fh, '<', $mbox or die "open $mbox: $!";
binmode $fh;
$ibx->import_mbox($fh, 'mboxrd');
